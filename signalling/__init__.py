"""Visits: booking, the state machine, SDP/ICE relay, TURN and the aiortc relay (to come)."""

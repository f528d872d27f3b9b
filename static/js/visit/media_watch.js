// What a call's own statistics say about its media (docs/visits.md, "Trust"), read by the call
// (visit.js) from getStats() every half second: whether the other party's media keeps arriving
// within `gapMs` (video frames decoded, or audio packets when no video comes), whether our own
// outbound packets advanced within `stallMs`, how long the picture has been still, and the
// link's level (link_quality.js), taken every LINK_MS and changed only when two readings agree.
// It keeps counters, not the screen: the call decides what to show and to report.
import { linkFigures, linkLevel } from "../link_quality.js";

const LINK_MS = 2000; // the link's figures are taken over this long

export class MediaWatch {
  constructor() {
    this.stallMs = 10000; // our own sending stopped this long: media_stall_s
    this.gapMs = 2000; // the other party's media stopped this long is an outage (media_gap_s)
    this.forget();
  }

  /** A new media session: what the last one measured is forgotten. */
  forget() {
    this.moved = {}; // getStats counter -> [value, when it last moved (ms)]
    this.stillS = 0; // seconds since the other party's media last moved, while it does not
    this.link = null; // the link's level as shown: {level, reason, label, text}
    this.linkNext = null; // a new level seen once, taken when the next reading agrees
    this.linkBefore = null; // linkFigures' last snapshot
  }

  /** Whether getStats counter `name` moved within `withinMs` (the stall threshold by
   * default) and ever moved. */
  advancing(name, value, now, withinMs = this.stallMs) {
    const [seen, at] = this.moved[name] || [0, now];
    this.moved[name] = value !== seen ? [value, now] : [seen, at];
    return value > 0 && now - this.moved[name][1] <= withinMs;
  }

  /** One reading at `now` (ms): {receiving, sending, stalledS}. The other party's media is its
   * picture when it sends video, else its audio; `stalledS`: how long ago it last came, when
   * it has stopped (undefined while it comes, or before it ever came). */
  read(stats, now) {
    let frames = 0, audio = 0;
    const sent = {};
    stats.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
      if (r.type === "inbound-rtp" && r.kind === "audio") audio += r.packetsReceived || 0;
      if (r.type === "outbound-rtp") sent[r.kind] = (sent[r.kind] || 0) + (r.packetsSent || 0);
    });
    const video = this.advancing("frames", frames, now, this.gapMs);
    const heard = this.advancing("audio", audio, now, this.gapMs);
    const receiving = frames > 0 ? video : heard;
    const kinds = Object.keys(sent);
    let sending = kinds.length > 0; // no camera or microphone at all: nothing is sent
    for (const kind of kinds) sending = this.advancing(`sent ${kind}`, sent[kind], now) && sending;
    const moved = this.moved[frames > 0 ? "frames" : "audio"];
    this.stillS = receiving || !moved ? 0 : (now - moved[1]) / 1000;
    return { receiving, sending, stalledS: receiving || !moved ? undefined : this.stillS };
  }

  /** The link's level from these stats, every LINK_MS: true when a reading was taken as
   * `this.link` (a new level, or the same level with new figures). A new level seen once is
   * taken only when the next reading agrees, so a moment's dip neither flickers nor is
   * announced. `video`: whether we send video. */
  measureLink(stats, now, video) {
    if (this.linkBefore && now - this.linkBefore.at < LINK_MS) return false;
    const { figures, snapshot } = linkFigures(stats, this.linkBefore, now, video);
    this.linkBefore = snapshot;
    if (!figures) return false;
    const seen = linkLevel(figures);
    if (!seen.level) return false;
    const shown = this.link && this.link.level;
    if (shown === null || shown === seen.level || this.linkNext === seen.level) {
      this.link = seen;
      this.linkNext = null;
      return true;
    }
    this.linkNext = seen.level;
    return false;
  }
}

/** What makes a new link report worth sending: a new level, or a reason where there was none
 * (the first level can be judged before the frame rate is measured; without this the staff
 * console kept "Link: Good" with no reason for the whole call). Not every new figure. */
export function linkKey(link) {
  return `${link.level}${link.reason ? "+" : ""}`;
}

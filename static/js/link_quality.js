// How good a visit's link is, from RTCPeerConnection.getStats() (issue 21 item 4; docs/visits.md,
// "Link quality"): inbound video frames a second, inbound packet loss, round-trip time and the
// outgoing bitrate the browser's congestion control allows, over the last couple of seconds,
// into a plain level with the reason in words. visit.js shows it on both sides of a call; the
// kiosk reports it with visit.media, and staff see it in the console's visit list.
import { t } from "./i18n.js";

// Each figure's floor for "Good" and for "Fair"; below the second it is "Poor". The clean call
// here decodes 20 frames a second (Chromium's fake camera) and allows >1 Mbit/s out; at
// 300 kbit/s Chromium keeps 12-13 frames a second (docs/BENCHMARKS.md, "Links").
const FPS = [15, 10];
const LOSS_PCT = [2, 5]; // at or above: worse
const RTT_MS = [300, 600]; // at or above: worse
const OUT_KBPS = [500, 150];
const LEVELS = ["good", "fair", "poor"];
// In the reader's language (i18n.js), read when shown.
export const LINK_WORDS = {
  get good() { return t("link.good"); },
  get fair() { return t("link.fair"); },
  get poor() { return t("link.poor"); },
};

function worse(value, [good, fair], higherIsBetter) {
  if (higherIsBetter) return value >= good ? 0 : value >= fair ? 1 : 2;
  return value < good ? 0 : value < fair ? 1 : 2;
}

/**
 * The level of a link from its figures, any of which may be null (not measured):
 * {fps, lossPct, rttMs, outKbps} -> {level: "good"|"fair"|"poor"|null, label ("Poor"), reason
 * ("9 frames a second, 6% loss"), text ("Poor: 9 frames a second, 6% loss")}.
 * The worst figure decides; the reason names the frame rate and every figure short of good.
 */
export function linkLevel({ fps = null, lossPct = null, rttMs = null, outKbps = null } = {}) {
  const judged = [
    // Frames are counted down (14.6 a second is not "15", the floor for Good); the rest rounded.
    [fps, FPS, true, (v) => t("link.fps", { n: Math.floor(v) })],
    [lossPct, LOSS_PCT, false, (v) => t("link.loss", { n: Math.round(v) })],
    [rttMs, RTT_MS, false, (v) => t("link.rtt", { n: Math.round(v) })],
    [outKbps, OUT_KBPS, true, (v) => t("link.sending", { n: Math.round(v) })],
  ].filter(([v]) => typeof v === "number" && Number.isFinite(v));
  if (judged.length === 0) return { level: null, label: t("link.measuring"), reason: "", text: t("link.measuring") };
  let rank = 0;
  const parts = [];
  for (const [value, floors, higher, words] of judged) {
    const r = worse(value, floors, higher);
    rank = Math.max(rank, r);
    if (r > 0 || floors === FPS) parts.push(words(value));
  }
  const level = LEVELS[rank];
  const reason = parts.join(", ");
  const label = LINK_WORDS[level];
  return { level, label, reason, text: reason ? `${label}: ${reason}` : label };
}

/** The running totals linkFigures compares: inbound frames, packets received and lost. */
function totals(stats) {
  const t = { frames: null, received: 0, lost: 0, rttMs: null, outKbps: null };
  let pair = null;
  const pairs = {};
  stats.forEach((r) => {
    if (r.type === "inbound-rtp") {
      if (r.kind === "video") t.frames = (t.frames || 0) + (r.framesDecoded || 0);
      t.received += r.packetsReceived || 0;
      t.lost += Math.max(0, r.packetsLost || 0); // duplicates can make it negative
    }
    if (r.type === "candidate-pair") pairs[r.id] = r;
    if (r.type === "transport" && r.selectedCandidatePairId) pair = r.selectedCandidatePairId;
  });
  const chosen = pairs[pair] || Object.values(pairs).find((p) => p.nominated && p.state === "succeeded");
  if (chosen && typeof chosen.currentRoundTripTime === "number") t.rttMs = chosen.currentRoundTripTime * 1000;
  if (chosen && typeof chosen.availableOutgoingBitrate === "number") t.outKbps = chosen.availableOutgoingBitrate / 1000;
  return t;
}

/**
 * The link's figures since `before` (the snapshot this returned last time, or null) from a
 * getStats() report taken at `nowMs`: {figures, snapshot}; figures is null on the first call.
 * `sendsVideo`: whether this side sends a picture (the outgoing bitrate is judged only then).
 */
export function linkFigures(stats, before, nowMs, sendsVideo) {
  const t = totals(stats);
  const snapshot = { at: nowMs, ...t };
  if (!before || nowMs <= before.at) return { figures: null, snapshot };
  const s = (nowMs - before.at) / 1000;
  const got = t.received - before.received, lost = t.lost - before.lost;
  const figures = {
    fps: t.frames === null || before.frames === null ? null : Math.max(0, t.frames - before.frames) / s,
    lossPct: got + lost > 0 ? (100 * Math.max(0, lost)) / (got + lost) : null,
    rttMs: t.rttMs,
    outKbps: sendsVideo ? t.outKbps : null,
  };
  return { figures, snapshot };
}

/**
 * Audio keeps priority on a thin link: the sender's encodings get a priority (Chromium's
 * bitrate allocator shares the estimate by it, and the network priority marks packets) high for
 * audio and low for video, and video degrades by frame rate and resolution together
 * ("balanced") rather than freezing at full size. Whatever the browser does not support it
 * ignores; the call goes on either way.
 */
export async function favourAudio(sender) {
  const kind = sender.track && sender.track.kind;
  if (!kind) return;
  try {
    const params = sender.getParameters();
    const rank = kind === "audio" ? "high" : "low";
    for (const e of params.encodings || []) Object.assign(e, { priority: rank, networkPriority: rank });
    if (kind === "video") params.degradationPreference = "balanced";
    await sender.setParameters(params);
  } catch {
    // An older browser refuses a field: the defaults already send audio ahead of video.
  }
}

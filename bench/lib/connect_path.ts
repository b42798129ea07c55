/**
 * Where a connect through tel spends its time, read from kernel packet timestamps: tcpdump in the workstation
 * (the TUN and the link to the manager) and in the cluster namespace (the manager's dial to the pod). Both captures
 * use the kernel's one clock, so the stages of one connect line up without instrumenting tel.
 */

/** One TCP segment from `tcpdump -r FILE -tt -n` (IPv4 or IPv6; addresses as tcpdump writes them, "ip.port"). */
export interface Segment {
  /** Seconds (kernel timestamp). */
  t: number;
  src: string;
  dst: string;
  /** tcpdump's flags: "S", "S.", ".", "P.", "F.", "FP.", "R", … */
  flags: string;
  /** Payload bytes. */
  len: number;
}

const LINE = /^(\d+\.\d+) .*?IP6? (\S+) > (\S+): Flags \[([^\]]+)\].*?length (\d+)/;

/** The TCP segments in tcpdump's text output, in order; other lines are skipped. */
export function parseTcpdump(text: string): Segment[] {
  const out: Segment[] = [];
  for (const line of text.split("\n")) {
    const m = LINE.exec(line);
    if (m) out.push({ t: Number(m[1]), src: m[2], dst: m[3], flags: m[4], len: Number(m[5]) });
  }
  return out;
}

/** The stages of one connect + first byte, in µs; together they make `total`. */
export interface ConnectStages {
  /** The client's SYN on the TUN → the daemon's first bytes to the manager after it (the open frame). */
  daemonIn: number;
  /** Those bytes → the manager's SYN to the target. */
  managerIn: number;
  /** The manager's SYN → its handshake ACK (the kernel's connect). */
  targetConnect: number;
  /** The handshake ACK → the manager's last bytes to the daemon before the SYN-ACK (the dial answer). */
  managerOut: number;
  /** The dial answer → the SYN-ACK on the TUN. */
  daemonOut: number;
  /** The SYN-ACK → the first byte of data on the TUN. */
  firstByte: number;
  /** The client's SYN → the first byte of data on the TUN. */
  total: number;
}

/** Stage names in path order, with what each covers (for reports). */
export const STAGES: [keyof ConnectStages, string][] = [
  ["daemonIn", "daemon in (SYN on the TUN → open frame out)"],
  ["managerIn", "manager in (open frame → SYN to the pod)"],
  ["targetConnect", "pod connect (kernel handshake)"],
  ["managerOut", "manager out (connected → dial answer out)"],
  ["daemonOut", "daemon out (dial answer → SYN-ACK on the TUN)"],
  ["firstByte", "first byte (SYN-ACK → data on the TUN)"],
  ["total", "total (SYN → first byte on the TUN)"],
];

/** Where the captured parties are, as tcpdump writes addresses ("ip.port"). */
export interface PathEnds {
  /** The pod's address as the workstation dials it (through tel), e.g. "198.18.0.30.9101". */
  pod: string;
  /** The manager's address as the daemon reaches it, e.g. "198.19.255.2.8081". */
  manager: string;
}

/** First index in `segs` (sorted by time) with t > `t`. */
function after(segs: Segment[], t: number): number {
  let lo = 0;
  let hi = segs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (segs[mid].t <= t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function find(segs: Segment[], from: number, ok: (s: Segment) => boolean): Segment | undefined {
  for (let i = from; i < segs.length; i++) if (ok(segs[i])) return segs[i];
  return undefined;
}

/**
 * Splits each sequential connect seen in the captures into {@link ConnectStages}. `ws` is the workstation's capture
 * (the TUN and the link to the manager), `cl` the cluster namespace's (the manager's connections to the pod).
 * Connects whose segments are not all there, or not in path order, are counted in `unmatched`.
 */
export function connectStages(ws: Segment[], cl: Segment[], ends: PathEnds): {
  stages: ConnectStages[];
  unmatched: number;
} {
  const podPort = ends.pod.slice(ends.pod.lastIndexOf(".") + 1);
  const stages: ConnectStages[] = [];
  let unmatched = 0;
  for (const syn of ws) {
    if (syn.flags !== "S" || syn.dst !== ends.pod) continue;
    const t0 = syn.t;
    const client = syn.src;
    const i = after(ws, t0);
    const j = after(cl, t0);
    const open = find(ws, i, (s) => s.dst === ends.manager && s.len > 0);
    const dial = find(cl, j, (s) => s.flags === "S" && s.dst.endsWith(`.${podPort}`));
    const connected = dial && find(cl, after(cl, dial.t), (s) => s.src === dial.src && s.flags === ".");
    const synAck = find(ws, i, (s) => s.src === ends.pod && s.dst === client && s.flags === "S.");
    const data = find(ws, i, (s) => s.src === ends.pod && s.dst === client && s.len > 0);
    let answer: Segment | undefined;
    if (connected && synAck) {
      for (let k = after(ws, connected.t); k < ws.length && ws[k].t < synAck.t; k++) {
        if (ws[k].src === ends.manager && ws[k].len > 0) answer = ws[k];
      }
    }
    if (!open || !dial || !connected || !synAck || !data || !answer) {
      unmatched++;
      continue;
    }
    const ts = [t0, open.t, dial.t, connected.t, answer.t, synAck.t, data.t];
    if (ts.some((t, k) => k > 0 && t < ts[k - 1])) {
      unmatched++;
      continue;
    }
    const us = (a: number, b: number) => Math.round((b - a) * 1e6);
    stages.push({
      daemonIn: us(t0, open.t),
      managerIn: us(open.t, dial.t),
      targetConnect: us(dial.t, connected.t),
      managerOut: us(connected.t, answer.t),
      daemonOut: us(answer.t, synAck.t),
      firstByte: us(synAck.t, data.t),
      total: us(t0, data.t),
    });
  }
  return { stages, unmatched };
}

/**
 * Where the slowest connects lose their time: over the `fraction` of connects with the largest total (at least one),
 * the mean of each stage, so the stages add up to their mean total. Per-stage p99s do not say this (each is over its
 * stage alone), nor would per-stage medians (each slow connect is slow in a stage of its own).
 */
export function slowestStages(stages: readonly ConnectStages[], fraction = 0.01): ConnectStages | undefined {
  if (stages.length === 0) return undefined;
  const k = Math.max(1, Math.round(stages.length * fraction));
  const slow = [...stages].sort((a, b) => b.total - a.total).slice(0, k);
  const out = {} as ConnectStages;
  for (const [key] of STAGES) out[key] = Math.round(slow.reduce((sum, s) => sum + s[key], 0) / k);
  return out;
}

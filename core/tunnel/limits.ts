/** The sizes both ends of a Manager call agree on: windows, data frame limits, message bounds (no grpc-js here). */

import { MAX_DATA_FRAME } from "./frame.ts";

/** The frame limit an opener's announcement allows: at least MAX_DATA_FRAME, at most {@link LARGE_DATA_FRAME}. */
export function limitFrom(announced: number): number {
  return announced >= MAX_DATA_FRAME ? Math.min(announced, LARGE_DATA_FRAME) : MAX_DATA_FRAME;
}

/** HTTP/2 flow-control window for both ends (stream and connection); the default 64 KiB caps one stream's rate. */
export const FLOW_CONTROL_WINDOW = 8 * 1024 * 1024;

/**
 * The window of tunnel sessions framed by h2_wire at both ends. Through the kube API's port-forward one flow is
 * window-bound (three relays, each holding megabytes of socket queue); with 8 MiB a 1-flow upload reached 0.86–1.4
 * Gbit/s there, with 32 MiB 1.9–2.1. A larger window used to cost the manager memory at scale (node:http2 lets what
 * paused streams hold grow to a stream window each); h2_wire keeps that within one connection window, and the scale
 * bench's manager peak stayed where it was (339/386 vs 367/332 MiB).
 */
export const WIRE_FLOW_CONTROL_WINDOW = 32 * 1024 * 1024;

/**
 * Largest data frame a dialer sends to an opener that announced it accepts them ({@link FRAME_LIMIT_HEADER}):
 * fewer, larger messages cost less per byte in grpc-js and node:http2 (+10-80% one stream target→client, measured).
 */
export const LARGE_DATA_FRAME = 256 * 1024;

/** Call metadata by which an opener announces the largest data frame it accepts. */
export const FRAME_LIMIT_HEADER = "tel-max-data-frame";

/** Largest gRPC message either side accepts: a large data frame plus framing slack. */
export const MAX_MESSAGE_BYTES = LARGE_DATA_FRAME + 4096;

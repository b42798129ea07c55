/** One L4 flow over a gRPC bidi stream: ConnID, frame codec and order, the opening and the dialing side. */

export {
  bytesToIp,
  type ConnId,
  connId,
  connIdFromWire,
  connIdToWire,
  type Endpoint,
  formatConnId,
  ipToBytes,
  type L4Protocol,
} from "./conn_id.ts";
export {
  allocDataBuffer,
  DATA_HEADROOM,
  decodeDataFrame,
  decodeFrame,
  encodeDataFrame,
  encodeFrame,
  type Frame,
  FrameOrder,
  frames,
  MAX_DATA_FRAME,
  type Role,
} from "./frame.ts";
export { type FrameDuplex, FrameStream, type ServedCall } from "./frame_stream.ts";
export {
  channelOptions,
  coalesceWrites,
  createManagerClient,
  createTunedServer,
  MANAGER_SERVICE,
  type ManagerClient,
  TUNNEL_METHOD,
} from "./grpc.ts";
export { FLOW_CONTROL_WINDOW, FRAME_LIMIT_HEADER, LARGE_DATA_FRAME, MAX_MESSAGE_BYTES } from "./limits.ts";
export { ManagerChannel, type ManagerTarget } from "./channel.ts";
export {
  callManager,
  type CallMethod,
  closePreparedCalls,
  openBareCall,
  openTunnel,
  type OpenTunnelOptions,
  PREPARED_CALLS,
  type Tunnel,
  type TunnelEnd,
  type TunnelTarget,
  type Watch,
  type WatchHandlers,
  watchManager,
} from "./client.ts";
export {
  DEFAULT_DIAL_TIMEOUT_MS,
  DEFAULT_UDP_IDLE_MS,
  type ServedFlow,
  serveTunnel,
  type ServeTunnelOptions,
} from "./dialer.ts";
export { h2ServedCall, TUNNEL_PATH } from "./h2_calls.ts";
export {
  CallError,
  decoderInput,
  GRPC_STATUS,
  MessageCall,
  type MessageHandlers,
  type MessageStream,
} from "./h2_messages.ts";

// Types for wsprism.js, the wsPrism client (SPEC 16). Guide: docs/client.md.

/** Hot Lane flags. */
export const HOT_SEQ: 1;
export const HOT_ACK: 2;
export const HOT_IS_ACK: 4;

export type State = "connecting" | "open" | "reconnecting" | "closed";

/** Why the gateway refused a handshake (from `GET /v1/ws/check`), or what the client saw. */
export type RefusalReason =
  | "unknown_tenant" | "auth_failed" | "tenant_full" | "rate_limited" | "draining" | "bad_request"
  | "unreachable" | "handshake_failed";

/** Server codes (sys.error) and the client's own. */
export type ErrorCode =
  | "BAD_REQUEST" | "AUTH_FAILED" | "RATE_LIMITED" | "PAYLOAD_TOO_LARGE" | "NOT_ALLOWED"
  | "RESOURCE_EXHAUSTED" | "UNSUPPORTED_VERSION" | "TOO_MANY_SESSIONS" | "TIMEOUT" | "INTERNAL"
  | "REFUSED" | "UNREACHABLE" | "CLOSED" | "DISCONNECTED" | "TICKET"
  | "MALFORMED" | "UNKNOWN_TYPE" | "BAD_FRAME";

export class WsPrismError extends Error {
  code: ErrorCode | string;
  /** refusals: why; closes: the kick reason or close reason */
  reason?: RefusalReason | string;
  /** closes */
  closeCode?: number;
  /** refusals with Retry-After (seconds) */
  retryAfter?: number;
  /** sys.error of a request */
  seq?: number;
  traceId?: string;
  /** a room the client could not re-join after a reconnect */
  room?: string;
}

export interface Options {
  /** default in a browser: ws(s)://<page host>/v1/ws */
  url?: string;
  tenant: string;
  /** a fixed ticket... */
  ticket?: string;
  /** ...or a function called before every (re)connect */
  getTicket?: () => string | Promise<string>;
  /** default: one per tab (sessionStorage; a duplicated tab gets its own); false: let the gateway pick */
  sid?: string | false;
  /** ms a request waits for its answer, and a sys:ping for any frame (default 5000) */
  timeout?: number;
  /** ms without any frame before the client sends sys:ping (default 20000) */
  pingInterval?: number;
  /** reconnect backoff bounds in ms (default 500 and 20000) */
  minDelay?: number;
  maxDelay?: number;
  /** a WebSocket constructor (Node 20: the `ws` package's) */
  WebSocket?: any;
}

export interface Authed { tenant: string; user: string; sid: string }

/** A room message as the gateway sent it (chat `msg`, service publishes, pushes). */
export interface Message {
  v: 1; svc: string; type: string; room?: string; seq?: number; data?: any;
  /** with history (SPEC 13) */
  offset?: number; epoch?: string;
}

export interface PresenceEvent { type: "user_joined" | "user_left"; room: string; user: string }

export interface HotFrame { svc: number; op: number; flags: number; seq?: number; payload: Uint8Array }

export interface Joined {
  room: string;
  /** true when the client joined again by itself after a reconnect */
  rejoin: boolean;
  /** with history and `since`: whether every missed message was replayed */
  recovered?: boolean;
  offset?: number;
  epoch?: string;
}

export interface Position { offset?: number; epoch?: string }

export interface StateInfo {
  closeCode?: number;
  reason?: RefusalReason | string;
  /** ms until the next attempt (state "reconnecting") */
  delay?: number;
}

export interface Presence { count: number; users: string[] }

export interface RequestOptions { room?: string; timeout?: number }

export interface Events {
  message: (m: Message) => void;
  presence: (e: PresenceEvent) => void;
  hot: (f: HotFrame) => void;
  state: (s: State, info: StateInfo) => void;
  error: (e: WsPrismError) => void;
  authed: (a: Authed) => void;
  joined: (j: Joined) => void;
}

export class WsPrism {
  constructor(options: Options);
  readonly state: State;
  /** after `authed` */
  readonly user?: string;
  readonly sid?: string;
  readonly authed?: Authed;
  readonly lastError?: WsPrismError;
  /** the rooms the client is in (re-joined after a reconnect) and their positions */
  readonly rooms: Map<string, Position>;

  on<E extends keyof Events>(event: E, fn: Events[E]): () => void;
  off<E extends keyof Events>(event: E, fn: Events[E]): void;

  /** Resolves on the next `authed`; rejects with the error that ends the attempt before it. */
  connect(): Promise<Authed>;
  close(): void;

  /** Rejected with the sys.error's code (or TIMEOUT, DISCONNECTED). */
  join(room: string, options?: { since?: Position }): Promise<Joined>;
  leave(room: string): Promise<void>;
  presence(room: string): Promise<Presence>;
  /** chat:send with seq and ACK_REQUESTED; resolves on the ack. Rejected, never queued, while not open. */
  send(room: string, msg: string, options?: { timeout?: number }): Promise<void>;
  /** resolves with the service's reply (undefined when it acked without one) */
  request(svc: string, type: string, data?: any, options?: RequestOptions): Promise<any>;
  /** sys:refresh; resolves with {exp} */
  refresh(ticket: string): Promise<{ exp: number | null }>;
  /** false when not open (the frame is dropped, as the Hot Lane is lossy) */
  sendHot(svc: number, op: number, payload?: ArrayBuffer | ArrayBufferView | string, options?: { ack?: false; seq?: number }): boolean;
  /** resolves on the gateway's ack frame */
  sendHot(svc: number, op: number, payload: ArrayBuffer | ArrayBufferView | string | undefined, options: { ack: true; timeout?: number }): Promise<void>;
  position(room: string): Position | undefined;
}

export function encodeHot(svc: number, op: number, payload?: ArrayBuffer | ArrayBufferView | string, flags?: number, seq?: number): Uint8Array;
/** null when the frame is shorter than its header */
export function decodeHot(frame: ArrayBuffer | ArrayBufferView): HotFrame | null;

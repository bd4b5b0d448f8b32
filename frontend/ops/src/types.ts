// The answers of the HTTP API that the dashboard reads (docs/openapi.yaml).

export interface ClusterNode {
  node_id: number;
  gate: string | null;
  connections: number;
  sessions: number;
  since_ms: number;
}

export interface Nodes {
  nodes: ClusterNode[];
}

export interface Latency {
  count: number;
  mean_ms: number | null;
  p50_ms: number | null;
  p90_ms: number | null;
  p99_ms: number | null;
}

export type Kind = "C2C" | "S2C" | "C2S";

export interface Route {
  appcode: number;
  msgtype: number;
  kind: Kind;
  accepted: number;
  pushed: number;
  acked: number;
  repushed: number;
  stored: number;
  pulled: number;
  ack_latency: Latency;
}

export interface Stats {
  totals: Record<string, number>;
  by_route: Route[];
  ack_latency: Latency;
  delivery_rate: number | null;
  delivery_rate_total: number | null;
  window_s: number;
}

export interface TraceEvent {
  ts_ms: number;
  node: number;
  event: string;
  msgid: string | null;
  uid: string | null;
  appcode: number | null;
}

export interface Trace {
  events: TraceEvent[];
  missing_nodes: number[];
  untraced_nodes: number[];
  truncated: boolean;
}

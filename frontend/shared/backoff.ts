// Reconnect delays and the set of msgids already delivered.

export interface BackoffOptions {
  /** The first delay's ceiling, in ms. */
  baseMs: number;
  /** No delay is longer than this, in ms. */
  capMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, capMs: 30_000 };

/**
 * The delay before reconnect attempt `attempt` (0 for the first): exponential,
 * capped, with "equal jitter": half of the ceiling fixed, half random, so that
 * many clients cut off at once (a node restart) do not come back in step, and
 * none retries at once in a tight loop.
 */
export function backoffDelay(attempt: number, options: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random): number {
  const ceiling = Math.min(options.capMs, options.baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/**
 * Msgids seen, in order of arrival, keeping the newest `limit` of them. A
 * message may arrive more than once (re-push, PULL; docs/protocol.md §6.3): the
 * first `add` of a msgid is true, later ones false.
 */
export class SeenSet {
  private readonly ids = new Set<bigint>();

  constructor(private readonly limit = 50_000) {}

  add(msgid: bigint): boolean {
    if (this.ids.has(msgid)) {
      return false;
    }
    this.ids.add(msgid);
    if (this.ids.size > this.limit) {
      const oldest = this.ids.values().next().value;
      if (oldest !== undefined) {
        this.ids.delete(oldest);
      }
    }
    return true;
  }

  has(msgid: bigint): boolean {
    return this.ids.has(msgid);
  }

  get size(): number {
    return this.ids.size;
  }
}

// Reconnect delays, the pause after RATE_LIMITED, and the set of msgids already delivered.

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
  return Math.round(jittered(backoffCeiling(attempt, options), random));
}

/** A delay between half and all of `ceiling` (jitter, so that clients refused together do not return together). */
export function jittered(ceiling: number, random: () => number): number {
  return ceiling / 2 + random() * (ceiling / 2);
}

/** The ceiling of delay `attempt` (0 for the first): `baseMs` doubled per attempt, at most `capMs`. */
export function backoffCeiling(attempt: number, options: BackoffOptions): number {
  return Math.min(options.capMs, options.baseMs * 2 ** Math.min(attempt, 30));
}

/** The pause after RATE_LIMITED has the same bounds as a reconnect's delay. */
export type SendPauseOptions = BackoffOptions;

/** As the Python client library's (docs/client.md §1): 50 ms, doubling up to 1 s. */
export const DEFAULT_SEND_PAUSE: SendPauseOptions = { baseMs: 50, capMs: 1000 };

/**
 * A client's pause after a C2C answered RATE_LIMITED (docs/protocol.md, result
 * code 6: retry after a backoff). The node is over capacity, and every frame
 * it refuses still costs it a read, a refusal and a write; so after a refusal
 * the client sends no new C2C for a while and refuses them itself:
 *
 * - the pause is `baseMs` after the first refusal in a row, doubling with each
 *   further one up to `capMs`, each between half and all of that (jitter);
 * - a frame sent before the current pause began was refused for the same
 *   overload: it neither lengthens the pause nor counts as one more refusal in
 *   a row, and its OK does not end the row;
 * - an accepted message ends the row.
 *
 * Nothing is queued: a message asked for during the pause fails at once, and
 * the page shows it failed, with its retry.
 */
export class SendPause {
  /** Refusals in a row (an accepted send resets it). */
  refusals = 0;
  private started = Number.NEGATIVE_INFINITY;
  private until = 0;

  constructor(
    private readonly options: SendPauseOptions = DEFAULT_SEND_PAUSE,
    private readonly random: () => number = Math.random,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(options.baseMs > 0 && options.baseMs <= options.capMs)) {
      throw new RangeError(`need 0 < baseMs <= capMs, got ${options.baseMs} and ${options.capMs}`);
    }
  }

  /** When a send asked for now would go out (for `sentAt` of refused/accepted). */
  clock(): number {
    return this.now();
  }

  /** Whether a C2C asked for now is to be refused without being sent. */
  paused(): boolean {
    return this.now() < this.until;
  }

  /** Milliseconds left of the pause (0 when there is none). */
  remainingMs(): number {
    return Math.max(0, this.until - this.now());
  }

  /** A send made at `sentAt` was answered RATE_LIMITED: pause, and return the pause's length in ms (0: it was in flight before the current pause began). */
  refused(sentAt: number): number {
    if (sentAt < this.started) {
      return 0;
    }
    const now = this.now();
    const pause = jittered(backoffCeiling(this.refusals, this.options), this.random);
    this.refusals += 1;
    this.started = now;
    this.until = Math.max(this.until, now + pause);
    return pause;
  }

  /** A send made at `sentAt` was carried out: the next refusal starts from the first pause again. */
  accepted(sentAt: number): void {
    if (sentAt >= this.started) {
      this.refusals = 0;
    }
  }
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

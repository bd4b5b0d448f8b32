// The API key, kept for this tab only (sessionStorage: gone when the tab
// closes; never localStorage, never a cookie).

const KEY = "msgplatform-ops-api-key";

export class KeyStore {
  constructor(private readonly storage: Storage) {}

  get(): string | null {
    try {
      return this.storage.getItem(KEY);
    } catch {
      return null;
    }
  }

  set(key: string): void {
    try {
      this.storage.setItem(KEY, key);
    } catch {
      // Storage refused (private mode quota): the key lives in memory only.
    }
  }

  clear(): void {
    try {
      this.storage.removeItem(KEY);
    } catch {
      // nothing kept
    }
  }
}

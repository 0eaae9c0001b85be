import { ConfigurationError } from '@keyhole/config';

/** What reading a set of files gave: what they hold, or why they cannot be used. */
export type FileLoading<Loaded> = { ok: true; loaded: Loaded } | { ok: false; problems: string[] };

/**
 * Files named by settings, read at start (files that cannot be used stop the start, naming the
 * setting) and again on `reload()` (files that cannot be used are refused and the ones in use stay).
 * The certificate store of a TLS listener and the proxy's VeNCrypt credentials are two of these.
 */
export class ReloadableFiles<Settings, Loaded> {
  private constructor(
    readonly settings: Settings,
    private readonly read: (settings: Settings, nowMs: number) => FileLoading<Loaded>,
    private current: Loaded,
  ) {}

  /** Reads and checks the files; throws a ConfigurationError naming each setting whose file cannot be used. */
  static load<Settings, Loaded>(
    settings: Settings,
    read: (settings: Settings, nowMs: number) => FileLoading<Loaded>,
    nowMs: number,
  ): ReloadableFiles<Settings, Loaded> {
    const loading = read(settings, nowMs);
    if (!loading.ok) {
      throw new ConfigurationError(loading.problems);
    }
    return new ReloadableFiles(settings, read, loading.loaded);
  }

  /** What the files held when last read successfully. */
  get loaded(): Loaded {
    return this.current;
  }

  /** Reads the files again; on any problem keeps what is in use. */
  reload(nowMs: number): FileLoading<Loaded> {
    const loading = this.read(this.settings, nowMs);
    if (loading.ok) {
      this.current = loading.loaded;
    }
    return loading;
  }
}

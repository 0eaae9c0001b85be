/**
 * The PostgreSQL NOTIFY channel on which a cell tells every proxy replica to end live sessions.
 * Payloads are JSON, at most PostgreSQL's 8000 bytes, so id lists are sent in chunks.
 */
export const CONSOLE_EVENTS_CHANNEL = 'keyhole_console_events';

export type ConsoleEvent =
  /**
   * These tokens were revoked: end every live session that uses one of them, and, for revocations
   * by instance, the sessions of those instances that came from the legacy store (no token id).
   */
  | { kind: 'revoke'; tokenIds: number[]; instanceUuids?: string[] }
  /** An operator ended these sessions. */
  | { kind: 'end-session'; sessionIds: string[] }
  /** A cell setting changed (the legacy fallback flag): read it again. */
  | { kind: 'settings' };

/** Ids per notification: 150 ids of up to 16 digits, or 150 quoted 36-character UUIDs (~5900 bytes), fit. */
export const IDS_PER_EVENT = 150;

/** Parses a notification payload; null for anything that is not a well-formed event. */
export function parseConsoleEvent(payload: string | undefined): ConsoleEvent | null {
  if (!payload || payload.length > 8000) return null;
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const event = value as Record<string, unknown>;
  if (event.kind === 'revoke' && Array.isArray(event.tokenIds) && event.tokenIds.every((id) => Number.isSafeInteger(id))) {
    const instances = event.instanceUuids;
    if (instances !== undefined && !(Array.isArray(instances) && instances.every((id) => typeof id === 'string' && id.length <= 36))) return null;
    return instances === undefined ? { kind: 'revoke', tokenIds: event.tokenIds as number[] } : { kind: 'revoke', tokenIds: event.tokenIds as number[], instanceUuids: instances as string[] };
  }
  if (event.kind === 'settings') return { kind: 'settings' };
  if (event.kind === 'end-session' && Array.isArray(event.sessionIds) && event.sessionIds.every((id) => typeof id === 'string' && id.length <= 36)) {
    return { kind: 'end-session', sessionIds: event.sessionIds as string[] };
  }
  return null;
}

/** The payloads that announce `event`, chunked to fit NOTIFY. */
export function consoleEventPayloads(event: ConsoleEvent): string[] {
  if (event.kind === 'settings') return [JSON.stringify(event)];
  if (event.kind === 'revoke' && event.instanceUuids?.length) {
    // The instances ride with the first chunk (a revocation by instance names one).
    const [first = JSON.stringify({ kind: 'revoke', tokenIds: [] }), ...rest] = consoleEventPayloads({ kind: 'revoke', tokenIds: event.tokenIds });
    const head = JSON.parse(first) as { kind: 'revoke'; tokenIds: number[] };
    return [JSON.stringify({ ...head, instanceUuids: event.instanceUuids }), ...rest];
  }
  const ids: (number | string)[] = event.kind === 'revoke' ? event.tokenIds : event.sessionIds;
  const payloads: string[] = [];
  for (let start = 0; start < ids.length; start += IDS_PER_EVENT) {
    const chunk = ids.slice(start, start + IDS_PER_EVENT);
    payloads.push(JSON.stringify(event.kind === 'revoke' ? { kind: 'revoke', tokenIds: chunk } : { kind: 'end-session', sessionIds: chunk }));
  }
  return payloads;
}

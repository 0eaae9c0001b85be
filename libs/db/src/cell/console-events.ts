/**
 * The PostgreSQL NOTIFY channel on which a cell tells every proxy replica to end live sessions.
 * Payloads are JSON, at most PostgreSQL's 8000 bytes, so id lists are sent in chunks.
 */
export const CONSOLE_EVENTS_CHANNEL = 'keyhole_console_events';

export type ConsoleEvent =
  /** These tokens were revoked: end every live session that uses one of them. */
  | { kind: 'revoke'; tokenIds: number[] }
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
    return { kind: 'revoke', tokenIds: event.tokenIds as number[] };
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
  const ids: (number | string)[] = event.kind === 'revoke' ? event.tokenIds : event.sessionIds;
  const payloads: string[] = [];
  for (let start = 0; start < ids.length; start += IDS_PER_EVENT) {
    const chunk = ids.slice(start, start + IDS_PER_EVENT);
    payloads.push(JSON.stringify(event.kind === 'revoke' ? { kind: 'revoke', tokenIds: chunk } : { kind: 'end-session', sessionIds: chunk }));
  }
  return payloads;
}

import { z } from 'zod';

/**
 * The PostgreSQL NOTIFY channel on which a cell tells every proxy replica to end live sessions.
 * Payloads are JSON, at most PostgreSQL's 8000 bytes, so id lists are sent in chunks.
 */
export const CONSOLE_EVENTS_CHANNEL = 'keyhole_console_events';

/** Session and instance ids are UUIDs; the bound keeps a hostile payload from growing the id sets. */
const shortId = z.string().max(36);

/**
 * The wire format of a notification payload (JSON). Keys beyond these are ignored, so an older
 * proxy still understands a newer sender's events; anything else is refused whole.
 */
const consoleEventSchema = z.discriminatedUnion('kind', [
  /**
   * These tokens were revoked: end every live session that uses one of them, and, for revocations
   * by instance, the sessions of those instances that came from the legacy store (no token id).
   * Token ids are int8 ids read as numbers: only safe integers are taken.
   */
  z.object({ kind: z.literal('revoke'), tokenIds: z.array(z.int()), instanceUuids: z.array(shortId).optional() }),
  /** An operator ended these sessions. */
  z.object({ kind: z.literal('end-session'), sessionIds: z.array(shortId) }),
  /** A cell setting changed (the legacy fallback flag): read it again. */
  z.object({ kind: z.literal('settings') }),
]);

export type ConsoleEvent = z.infer<typeof consoleEventSchema>;

/** Ids per notification: 150 ids of up to 16 digits, or 150 quoted 36-character UUIDs (~5900 bytes), fit. */
export const IDS_PER_EVENT = 150;

/** Parses a notification payload; null for anything that is not a well-formed event. */
export function parseConsoleEvent(payload: string | undefined): ConsoleEvent | null {
  // Longer than NOTIFY allows: not from a keyhole sender, and not worth parsing.
  if (!payload || payload.length > 8000) {
    return null;
  }
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return null;
  }
  const parsed = consoleEventSchema.safeParse(value);
  return parsed.success ? parsed.data : null;
}

/** The payloads that announce `event`, chunked to fit NOTIFY. */
export function consoleEventPayloads(event: ConsoleEvent): string[] {
  if (event.kind === 'settings') {
    return [JSON.stringify(event)];
  }
  if (event.kind === 'revoke' && event.instanceUuids?.length) {
    // The instances ride with the first chunk (a revocation by instance names one).
    const [first = JSON.stringify({ kind: 'revoke', tokenIds: [] }), ...rest] = consoleEventPayloads({
      kind: 'revoke',
      tokenIds: event.tokenIds,
    });
    const head = JSON.parse(first) as { kind: 'revoke'; tokenIds: number[] };
    return [JSON.stringify({ ...head, instanceUuids: event.instanceUuids }), ...rest];
  }
  const ids: (number | string)[] = event.kind === 'revoke' ? event.tokenIds : event.sessionIds;
  const payloads: string[] = [];
  for (let start = 0; start < ids.length; start += IDS_PER_EVENT) {
    const chunk = ids.slice(start, start + IDS_PER_EVENT);
    payloads.push(
      JSON.stringify(event.kind === 'revoke' ? { kind: 'revoke', tokenIds: chunk } : { kind: 'end-session', sessionIds: chunk }),
    );
  }
  return payloads;
}

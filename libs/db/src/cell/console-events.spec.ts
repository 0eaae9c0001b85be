import { consoleEventPayloads, IDS_PER_EVENT, parseConsoleEvent } from './console-events';

const uuid = (index: number) => `00000000-0000-4000-8000-${String(index).padStart(12, '0')}`;

describe('parseConsoleEvent', () => {
  it.each([
    [
      'a revocation of token ids',
      '{"kind":"revoke","tokenIds":[1,2,9007199254740991]}',
      { kind: 'revoke', tokenIds: [1, 2, 9007199254740991] },
    ],
    ['a revocation of no ids', '{"kind":"revoke","tokenIds":[]}', { kind: 'revoke', tokenIds: [] }],
    [
      'a revocation by instance',
      `{"kind":"revoke","tokenIds":[7],"instanceUuids":["${uuid(1)}"]}`,
      { kind: 'revoke', tokenIds: [7], instanceUuids: [uuid(1)] },
    ],
    ['an operator ending sessions', `{"kind":"end-session","sessionIds":["${uuid(2)}"]}`, { kind: 'end-session', sessionIds: [uuid(2)] }],
    ['a settings change', '{"kind":"settings"}', { kind: 'settings' }],
  ])('accepts %s', (_name, payload, event) => {
    expect(parseConsoleEvent(payload)).toStrictEqual(event);
  });

  it('drops keys it does not know, so that a newer sender does not silence an older proxy', () => {
    expect(parseConsoleEvent('{"kind":"settings","name":"legacy_fallback"}')).toStrictEqual({ kind: 'settings' });
    expect(parseConsoleEvent('{"kind":"revoke","tokenIds":[3],"reason":"operator"}')).toStrictEqual({ kind: 'revoke', tokenIds: [3] });
  });

  it.each([
    ['no payload', undefined],
    ['an empty payload', ''],
    ['a payload longer than NOTIFY allows', `{"kind":"revoke","tokenIds":[${'1,'.repeat(4000)}1]}`],
    ['text that is not JSON', 'revoke 1 2'],
    ['JSON null', 'null'],
    ['a JSON array', '[{"kind":"settings"}]'],
    ['a JSON string', '"settings"'],
    ['an unknown kind', '{"kind":"reboot"}'],
    ['no kind', '{"tokenIds":[1]}'],
    ['a revocation without token ids', '{"kind":"revoke"}'],
    ['token ids that are not a list', '{"kind":"revoke","tokenIds":1}'],
    ['a token id given as a string', '{"kind":"revoke","tokenIds":["1"]}'],
    ['a fractional token id', '{"kind":"revoke","tokenIds":[1.5]}'],
    ['a token id beyond 2^53', '{"kind":"revoke","tokenIds":[9007199254740992]}'],
    ['an instance list that is null', '{"kind":"revoke","tokenIds":[],"instanceUuids":null}'],
    ['an instance id longer than a UUID', `{"kind":"revoke","tokenIds":[],"instanceUuids":["${uuid(1)}x"]}`],
    ['an instance id that is a number', '{"kind":"revoke","tokenIds":[],"instanceUuids":[1]}'],
    ['an end without session ids', '{"kind":"end-session"}'],
    ['a session id longer than a UUID', `{"kind":"end-session","sessionIds":["${uuid(2)}x"]}`],
    ['a session id that is a number', '{"kind":"end-session","sessionIds":[2]}'],
  ])('refuses %s', (_name, payload) => {
    expect(parseConsoleEvent(payload)).toBeNull();
  });
});

describe('consoleEventPayloads', () => {
  it('chunks long id lists into payloads that each fit NOTIFY and parse back to the same ids', () => {
    const tokenIds = Array.from({ length: IDS_PER_EVENT * 2 + 1 }, (_, index) => Number.MAX_SAFE_INTEGER - index);
    const payloads = consoleEventPayloads({ kind: 'revoke', tokenIds, instanceUuids: [uuid(1)] });
    expect(payloads).toHaveLength(3);
    for (const payload of payloads) {
      expect(Buffer.byteLength(payload)).toBeLessThan(8000);
    }
    const events = payloads.map((payload) => parseConsoleEvent(payload));
    // The instances ride with the first chunk only.
    expect(events.map((event) => (event?.kind === 'revoke' ? event.instanceUuids : null))).toEqual([[uuid(1)], undefined, undefined]);
    expect(events.flatMap((event) => (event?.kind === 'revoke' ? event.tokenIds : []))).toEqual(tokenIds);

    const sessionIds = Array.from({ length: IDS_PER_EVENT + 1 }, (_, index) => uuid(index));
    const sessionEvents = consoleEventPayloads({ kind: 'end-session', sessionIds }).map((payload) => parseConsoleEvent(payload));
    expect(sessionEvents.flatMap((event) => (event?.kind === 'end-session' ? event.sessionIds : []))).toEqual(sessionIds);
  });

  it('announces a revocation by instance even when it deleted no token', () => {
    expect(
      consoleEventPayloads({ kind: 'revoke', tokenIds: [], instanceUuids: [uuid(1)] }).map((payload) => parseConsoleEvent(payload)),
    ).toEqual([{ kind: 'revoke', tokenIds: [], instanceUuids: [uuid(1)] }]);
  });
});

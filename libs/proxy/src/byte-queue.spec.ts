import { ByteQueue } from './byte-queue';

describe('ByteQueue', () => {
  const overflow = () => new Error('too much');

  it('reads exact lengths across chunk boundaries and hands back the rest', async () => {
    const queue = new ByteQueue(64, overflow);
    const first = queue.read(3);
    expect(queue.waiting).toBe(true);
    queue.push(Buffer.from('ab'));
    queue.push(Buffer.from('cdef'));
    await expect(first).resolves.toEqual(Buffer.from('abc'));
    expect(queue.waiting).toBe(false);
    await expect(queue.read(2)).resolves.toEqual(Buffer.from('de'));
    queue.push(Buffer.from('gh'));
    expect(queue.takeRest()).toEqual(Buffer.from('fgh'));
    await expect(queue.read(1)).rejects.toThrow('handed over');
  });

  it('fails a peer that sends more than the bound, and refuses a read longer than it', async () => {
    const queue = new ByteQueue(4, overflow);
    await expect(queue.read(5)).rejects.toThrow('too much');
    const waiting = queue.read(4);
    queue.push(Buffer.from('abc'));
    queue.push(Buffer.from('de'));
    await expect(waiting).resolves.toEqual(Buffer.from('abcd'));
    // Unread: 'e', then 4 more bytes out of turn.
    queue.push(Buffer.from('fghi'));
    await expect(queue.read(1)).rejects.toThrow('too much');
  });

  it('rejects the waiting read and every later one once the peer is gone', async () => {
    const queue = new ByteQueue(64, overflow);
    const waiting = queue.read(2);
    queue.fail(new Error('gone'));
    await expect(waiting).rejects.toThrow('gone');
    await expect(queue.read(1)).rejects.toThrow('gone');
    expect(queue.takeRest()).toEqual(Buffer.alloc(0));
  });
});

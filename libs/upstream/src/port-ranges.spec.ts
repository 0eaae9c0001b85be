import { formatPortRanges, parsePortRanges, withoutPorts } from './port-ranges';

describe('port ranges', () => {
  it('reads ports and ranges separated by commas, spaces allowed', () => {
    expect(parsePortRanges('22, 5900-5999,10000-20000')).toEqual({
      ranges: [
        { from: 22, to: 22 },
        { from: 5900, to: 5999 },
        { from: 10000, to: 20000 },
      ],
    });
    expect(parsePortRanges('65535')).toEqual({ ranges: [{ from: 65535, to: 65535 }] });
  });

  it.each(['', '5900-', '-5900', '0', '5900-65536', 'vnc', '5900,,5901', '5900 5901'])('refuses %p', (text) => {
    expect(parsePortRanges(text)).toEqual({ error: expect.stringMatching(/is not a port range/) });
  });

  it('leaves out excluded ports, splitting the ranges that hold them', () => {
    const ranges = parsePortRanges('5900-5999,10000-20000');
    if ('error' in ranges) {
      throw new Error(ranges.error);
    }
    expect(formatPortRanges(withoutPorts(ranges.ranges, [17880, 5900, 6081, 20000, 17880]))).toBe('5901-5999,10000-17879,17881-19999');
    expect(withoutPorts([{ from: 22, to: 22 }], [22])).toEqual([]);
  });
});

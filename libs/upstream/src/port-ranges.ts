/** Ports `from` to `to`, both included (1-65535). */
export interface PortRange {
  from: number;
  to: number;
}

const PORT_OR_RANGE = /^(\d{1,5})(?:-(\d{1,5}))?$/;

/**
 * Parses a routes file's `ports`: ports and ranges separated by commas, as in `"22,5900-5999"`
 * (spaces around items are allowed). Answers the ranges, or the first item that is not a port or
 * a range, as the error message to show.
 */
export function parsePortRanges(text: string): { ranges: PortRange[] } | { error: string } {
  const ranges: PortRange[] = [];
  for (const item of text.split(',').map((part) => part.trim())) {
    const found = PORT_OR_RANGE.exec(item);
    if (!found) {
      return { error: `"${item}" is not a port range` };
    }
    const from = Number(found[1]);
    const to = found[2] === undefined ? from : Number(found[2]);
    if (from < 1 || to > 65_535 || from > 65_535) {
      return { error: `"${item}" is not a port range: ports are 1-65535` };
    }
    if (from > to) {
      return { error: `"${item}" is not a port range: it ends before it starts` };
    }
    ranges.push({ from, to });
  }
  return { ranges };
}

/** Whether `port` is in one of `ranges`. */
export function inPortRanges(ranges: readonly PortRange[], port: number): boolean {
  return ranges.some((range) => port >= range.from && port <= range.to);
}

/** Ranges as a routes file writes them: `5900-5999,10000`. */
export function formatPortRanges(ranges: readonly PortRange[]): string {
  return ranges.map((range) => (range.from === range.to ? String(range.from) : `${range.from}-${range.to}`)).join(',');
}

/**
 * `ranges` without the ports in `excluded`: a range that holds one is split around it. Used where
 * a generated routes file must allow console ports but never a service's own port.
 */
export function withoutPorts(ranges: readonly PortRange[], excluded: Iterable<number>): PortRange[] {
  let result = ranges.map((range) => ({ ...range }));
  for (const port of new Set(excluded)) {
    result = result.flatMap((range) => {
      if (port < range.from || port > range.to) {
        return [range];
      }
      const parts: PortRange[] = [];
      if (port > range.from) {
        parts.push({ from: range.from, to: port - 1 });
      }
      if (port < range.to) {
        parts.push({ from: port + 1, to: range.to });
      }
      return parts;
    });
  }
  return result;
}

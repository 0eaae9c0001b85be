/**
 * Console types keyhole issues tokens for and proxies. Names are Nova's (`ConsoleAuthToken.console_type`).
 * Nova's other types (spice-direct, webmks, the retired rdp-html5 and xvpvnc) are refused.
 */
export const CONSOLE_TYPES = ['novnc', 'spice-html5', 'serial'] as const;

export type ConsoleType = (typeof CONSOLE_TYPES)[number];

export function isConsoleType(value: string): value is ConsoleType {
  return (CONSOLE_TYPES as readonly string[]).includes(value);
}

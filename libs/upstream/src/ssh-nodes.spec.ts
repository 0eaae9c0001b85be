import { ncCommand } from './ssh-nodes';

describe('ncCommand (mode: nc, whose host comes from a token row)', () => {
  it('passes IP addresses and host names, quoted', () => {
    expect(ncCommand({ host: '169.254.20.5', port: 5901 })).toBe("nc -N '169.254.20.5' 5901");
    expect(ncCommand({ host: 'fd00::5', port: 22 })).toBe("nc -N 'fd00::5' 22");
    expect(ncCommand({ host: 'console-7.example.net', port: 10000 })).toBe("nc -N 'console-7.example.net' 10000");
  });

  it('refuses anything a shell or nc could read as more than an address and a port', () => {
    for (const host of ["x'; reboot; '", 'a b', '$(id)', '-e/bin/sh', '', 'host\nname']) {
      expect(ncCommand({ host, port: 5900 })).toBeUndefined();
    }
    for (const port of [0, 65536, 59.5, Number.NaN]) {
      expect(ncCommand({ host: '169.254.20.5', port })).toBeUndefined();
    }
  });
});

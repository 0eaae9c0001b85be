import { ConfigurationError } from '@keyhole/config';
import { VencryptCredentials } from './vencrypt-credentials';

describe('VencryptCredentials', () => {
  const problemsOf = (build: () => unknown): string[] => {
    try {
      build();
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigurationError);
      return (error as ConfigurationError).problems;
    }
    throw new Error('expected a ConfigurationError');
  };

  it('names each setting whose file cannot be used, never its contents', () => {
    const problems = problemsOf(() =>
      VencryptCredentials.load({ caFile: '/nonexistent/ca.pem', clientCertFile: __filename, clientKeyFile: '/nonexistent/key.pem' }),
    );
    expect(problems).toEqual([
      'KEYHOLE_PROXY_VENCRYPT_CA_FILE: cannot read /nonexistent/ca.pem (ENOENT)',
      'KEYHOLE_PROXY_VENCRYPT_CLIENT_KEY_FILE: cannot read /nonexistent/key.pem (ENOENT)',
      `KEYHOLE_PROXY_VENCRYPT_CLIENT_CERT_FILE: ${__filename} holds no PEM certificate`,
    ]);
  });

  it('refuses a CA file that holds no certificate', () => {
    expect(problemsOf(() => VencryptCredentials.load({ caFile: __filename, clientCertFile: undefined, clientKeyFile: undefined }))).toEqual(
      [`KEYHOLE_PROXY_VENCRYPT_CA_FILE: ${__filename} holds no PEM CA certificate`],
    );
  });
});

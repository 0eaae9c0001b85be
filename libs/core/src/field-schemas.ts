import { isIP } from 'node:net';
import { z } from 'zod';

/*
 * The rules for values that reach keyhole from outside (API bodies, CLI flags), shared so that
 * every entry point accepts and refuses exactly the same things.
 */

const HOSTNAME = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/** Whether `value` is a DNS host name (labels of letters, digits and inner dashes; an IP address is not one). */
export function isHostname(value: string): boolean {
  return isIP(value) === 0 && HOSTNAME.test(value);
}

export const cellNameSchema = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'lowercase letters, digits and inner dashes, at most 63');

export const instanceUuidSchema = z.uuid('must be a UUID').transform((value) => value.toLowerCase());

/** A console endpoint: a hostname, an IPv4 address, or an IPv6 address without brackets. */
export const consoleHostSchema = z
  .string()
  .max(255)
  .refine((value) => isIP(value) !== 0 || HOSTNAME.test(value), 'must be a hostname or an IP address');

export const portSchema = z.int('must be an integer').min(1, 'must be between 1 and 65535').max(65535, 'must be between 1 and 65535');

export const postgresUrlSchema = z
  .string()
  .max(2048)
  .regex(/^postgres(ql)?:\/\/\S+$/, 'must be a postgres:// URL');

/** An absolute URL with one of `schemes`, a host, no fragment, at most 255 characters. */
export function absoluteUrlSchema(schemes: string[]) {
  return z
    .string()
    .max(255)
    .refine(
      (value) => {
        try {
          const url = new URL(value);
          return schemes.includes(url.protocol.replace(/:$/, '')) && url.hostname !== '' && url.hash === '';
        } catch {
          return false;
        }
      },
      `must be an absolute ${schemes.join('/')} URL without a fragment`,
    );
}

export const credentialNameSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[\x20-\x7e]+$/, 'printable ASCII');

/** Describes every issue of a failed parse as `field: message`. */
export function describeZodIssues(error: z.ZodError, prefix?: string): { field: string; message: string }[] {
  return error.issues.flatMap((issue) => {
    // An unknown key is reported at its parent's path; name each unknown field instead.
    const paths = issue.code === 'unrecognized_keys' ? issue.keys.map((key) => [...issue.path, key]) : [issue.path];
    return paths.map((path) => ({
      field: [prefix, ...path.map(String)].filter(Boolean).join('.') || '(value)',
      message: issue.code === 'unrecognized_keys' ? 'unknown field' : issue.message,
    }));
  });
}

import { INestApplicationContext } from '@nestjs/common';
import { parseArgs, ParseArgsConfig } from 'node:util';
import { z } from 'zod';
import { KeyholeConfig } from '@keyhole/config';
import { describeZodIssues } from '@keyhole/core';

/** What a command gets: its own arguments, the configuration, and a way to reach the services. */
export interface CommandContext {
  args: string[];
  config: KeyholeConfig;
  /** Opens the Nest context on the control database (once) and returns it. */
  services: () => Promise<INestApplicationContext>;
  out: (line: string) => void;
}

export interface Command {
  /** e.g. `credentials create` */
  name: string;
  usage: string;
  summary: string;
  run(context: CommandContext): Promise<number>;
}

/** A mistake in how a command was called: printed with the command's usage, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Strict parseArgs: an unknown flag or a missing value is a UsageError naming it. */
export function parseFlags<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T, allowPositionals = false) {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true });
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
}

/** Validates one flag value with the same rules the API applies. */
export function validated<Schema extends z.ZodType>(schema: Schema, value: unknown, flag: string): z.output<Schema> {
  const parsed = schema.safeParse(value);
  if (parsed.success) {
    return parsed.data;
  }
  throw new UsageError(
    describeZodIssues(parsed.error, flag)
      .map((issue) => `${issue.field}: ${issue.message}`)
      .join('; '),
  );
}

/** Prints rows as aligned columns, or as JSON with --json. */
export function printRows(out: (line: string) => void, rows: Record<string, unknown>[], json: boolean): void {
  if (json) {
    out(JSON.stringify(rows, null, 2));
    return;
  }
  if (rows.length === 0) {
    out('(none)');
    return;
  }
  const columns = Object.keys(rows[0]);
  const cell = (value: unknown): string => {
    if (value === null || value === undefined) {
      return '-';
    }
    return typeof value === 'string' ? value : JSON.stringify(value);
  };
  const widths = columns.map((column) => Math.max(column.length, ...rows.map((row) => cell(row[column]).length)));
  const line = (values: string[]) =>
    values
      .map((value, index) => value.padEnd(widths[index]))
      .join('  ')
      .trimEnd();
  out(line(columns.map((column) => column.toUpperCase())));
  for (const row of rows) {
    out(line(columns.map((column) => cell(row[column]))));
  }
}

import { PipeTransform } from '@nestjs/common';
import { z } from 'zod';
import { describeZodIssues, KeyholeError } from '@keyhole/core';

/** describeZodIssues's message for a key the schema does not know. */
const UNKNOWN_FIELD = 'unknown field';

/**
 * Validates one request part (body, query or a path parameter) against a zod schema and hands the
 * parsed value to the handler. Failures are INVALID_INPUT naming every bad field (an unknown query
 * or path key by its part only).
 */
export class ZodValidationPipe<Schema extends z.ZodType> implements PipeTransform<unknown, z.output<Schema>> {
  constructor(
    private readonly schema: Schema,
    private readonly part: 'body' | 'query' | 'path',
    private readonly fieldPrefix?: string,
  ) {}

  transform(value: unknown): z.output<Schema> {
    const parsed = this.schema.safeParse(this.part === 'body' && value === undefined ? {} : value);
    if (parsed.success) {
      return parsed.data;
    }
    const fields = unique(
      describeZodIssues(parsed.error, this.fieldPrefix).map((issue) => {
        if (issue.field === '(value)') {
          return { ...issue, field: this.part };
        }
        // An unknown key of the query or path is not repeated: it may be a token (`?<token>`).
        if (this.part !== 'body' && issue.message === UNKNOWN_FIELD) {
          return { field: this.part, message: 'unknown parameter' };
        }
        return issue;
      }),
    );
    throw new KeyholeError('INVALID_INPUT', `Invalid ${this.part}: ${fields.map((f) => f.field).join(', ')}`, {
      details: { in: this.part, fields },
    });
  }
}

function unique(fields: { field: string; message: string }[]): { field: string; message: string }[] {
  const seen = new Set<string>();
  return fields.filter((entry) => {
    const key = `${entry.field}\n${entry.message}`;
    if (seen.has(key)) {
      return false;
    }
    seen.add(key);
    return true;
  });
}

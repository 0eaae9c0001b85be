import { PipeTransform } from '@nestjs/common';
import { z } from 'zod';
import { describeZodIssues, KeyholeError } from '@keyhole/core';

/**
 * Validates one request part (body, query or a path parameter) against a zod schema and hands the
 * parsed value to the handler. Failures are INVALID_INPUT naming every bad field.
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
    const fields = describeZodIssues(parsed.error, this.fieldPrefix).map((issue) =>
      issue.field === '(value)' ? { ...issue, field: this.part } : issue,
    );
    throw new KeyholeError('INVALID_INPUT', `Invalid ${this.part}: ${fields.map((f) => f.field).join(', ')}`, {
      details: { in: this.part, fields },
    });
  }
}

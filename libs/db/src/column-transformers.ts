import { ValueTransformer } from 'typeorm';

/**
 * pg returns int8 as a string (it may exceed 2^53). keyhole's int8 columns (ids, epoch seconds,
 * byte counts) stay far below 2^53, so they are read as numbers; a value beyond that is refused
 * rather than silently rounded.
 */
export function int8AsNumber(value: unknown): number | null | undefined {
  if (value === null || value === undefined) {
    return value;
  }
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed)) {
    throw new RangeError('int8 value beyond 2^53');
  }
  return parsed;
}

/** `int8AsNumber` for the entities' int8 columns. */
export const bigintAsNumber: ValueTransformer = {
  to: (value: number | null | undefined) => value,
  from: int8AsNumber,
};

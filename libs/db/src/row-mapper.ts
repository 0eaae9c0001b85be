/** Where one entity property is stored, and how pg's value becomes the property's. */
export interface ColumnMapping {
  column: string;
  /** Converts what pg returns (int8 arrives as a string); the value as is when absent. */
  read?: (value: unknown) => unknown;
}

/**
 * The one mapping between a table's rows and its entity, for every statement keyhole writes in
 * SQL. The type requires a column for every property of the entity, so adding a column means
 * editing the entity and its mapping, and the compiler points at the mapping that was forgotten.
 */
export class RowMapper<Entity extends object> {
  private readonly properties: (keyof Entity)[];
  private readonly allColumns: string;

  constructor(
    private readonly create: new () => Entity,
    private readonly columns: { readonly [Property in keyof Entity]-?: ColumnMapping },
  ) {
    this.properties = Object.keys(columns) as (keyof Entity)[];
    this.allColumns = this.properties.map((property) => columns[property].column).join(', ');
  }

  /**
   * `id, token_hash, ...`: the columns of these properties (all by default) for a SELECT or a
   * RETURNING. Always explicit, never `*` (see runPrepared).
   */
  columnList(properties?: readonly (keyof Entity)[]): string {
    if (properties === undefined) return this.allColumns;
    return properties.map((property) => this.columns[property].column).join(', ');
  }

  /** The entity of a row selected with every column. */
  fromRow(row: Record<string, unknown>): Entity {
    return this.assign(new this.create(), row, this.properties) as Entity;
  }

  /** A plain object of these properties, from a row selected with `columnList(properties)`. */
  pick<Property extends keyof Entity>(row: Record<string, unknown>, properties: readonly Property[]): Pick<Entity, Property> {
    return this.assign({}, row, properties) as Pick<Entity, Property>;
  }

  private assign(target: object, row: Record<string, unknown>, properties: readonly (keyof Entity)[]): object {
    const values = target as Record<keyof Entity, unknown>;
    for (const property of properties) {
      const { column, read } = this.columns[property];
      const value = row[column];
      values[property] = read === undefined ? value : read(value);
    }
    return target;
  }
}

import { DataSource } from 'typeorm';
import { CellSettingEntity } from './cell-setting.entity';
import { consoleEventPayloads } from './console-events';
import { notify } from './console-session.repository';

/** Names of cell settings. */
export const LEGACY_FALLBACK_SETTING = 'legacy_fallback';

/** `cell_settings` of one cell: append-only; the newest row of a name is its value. */
export class CellSettingRepository {
  constructor(
    readonly cellName: string,
    private readonly dataSource: DataSource,
  ) {}

  /** The newest row of a setting, or null when it was never set. */
  current(name: string): Promise<CellSettingEntity | null> {
    return this.dataSource.getRepository(CellSettingEntity).findOne({ where: { name }, order: { id: 'DESC' } });
  }

  /** The newest changes of a setting, newest first. */
  history(name: string, limit: number): Promise<CellSettingEntity[]> {
    return this.dataSource.getRepository(CellSettingEntity).find({ where: { name }, order: { id: 'DESC' }, take: limit });
  }

  /** Records a new value and tells every proxy of the cell, in one transaction. */
  set(name: string, value: unknown, changedBy: string): Promise<void> {
    return this.dataSource.transaction(async (manager) => {
      await manager.getRepository(CellSettingEntity).insert({ name, value: value as object, changedBy });
      await notify(manager, consoleEventPayloads({ kind: 'settings' }));
    });
  }
}

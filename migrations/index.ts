import { CreateCellSchema1795316000000 } from './cell/1795316000000-CreateCellSchema';
import { AddRevokedTokenHashes1795330000000 } from './cell/1795330000000-AddRevokedTokenHashes';
import { AddExclusiveConsoleIndex1796025000000 } from './cell/1796025000000-AddExclusiveConsoleIndex';
import { AddSessionRoute1796305000000 } from './cell/1796305000000-AddSessionRoute';
import { AddLiveSessionProxyIndex1796410000000 } from './cell/1796410000000-AddLiveSessionProxyIndex';
import { MoveTokenExtrasToSideTable1796500000000 } from './cell/1796500000000-MoveTokenExtrasToSideTable';
import { CreateControlSchema1795316000000 } from './control/1795316000000-CreateControlSchema';
import { CreateAuthFailures1796400000000 } from './control/1796400000000-CreateAuthFailures';

/**
 * Migrations are listed here explicitly (not globbed) so the same list works under ts-node, jest
 * and the compiled build. Append new ones; never edit or reorder a committed one.
 */
export const CONTROL_MIGRATIONS = [CreateControlSchema1795316000000, CreateAuthFailures1796400000000];

export const CELL_MIGRATIONS = [
  CreateCellSchema1795316000000,
  AddRevokedTokenHashes1795330000000,
  AddExclusiveConsoleIndex1796025000000,
  AddSessionRoute1796305000000,
  AddLiveSessionProxyIndex1796410000000,
  MoveTokenExtrasToSideTable1796500000000,
];

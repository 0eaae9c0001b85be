import { Injectable } from '@nestjs/common';
import { CellDatabases } from '@keyhole/cells';
import { CLOCK, Clock, KeyholeError, nowSeconds } from '@keyhole/core';
import { ConsoleSessionEntity } from '@keyhole/db';
import { Inject } from '@nestjs/common';

/** What the API shows of a console session (never a token; the fingerprint identifies it). */
export interface SessionView {
  id: string;
  tokenId: number | null;
  tokenSource: 'database' | 'legacy';
  fingerprint: string;
  instanceUuid: string;
  consoleType: string;
  host: string;
  port: number;
  proxyInstance: string;
  clientAddress: string | null;
  /** The name of the route that reached the console; null when the proxy had no routes file. */
  route: string | null;
  startedAt: string;
  lastSeenAt: string;
  endedAt: string | null;
  closeReason: string | null;
  bytesToClient: number;
  bytesToConsole: number;
}

export interface SerialPortStatus {
  host: string;
  port: number;
  /** True when no live session holds the port. */
  free: boolean;
  /** The live session holding it, if any. */
  sessionId: string | null;
}

/** Console sessions of a cell, as the proxies record them; operators list and end them. */
@Injectable()
export class SessionsService {
  constructor(
    private readonly databases: CellDatabases,
    @Inject(CLOCK) private readonly clock: Clock,
  ) {}

  async list(cellName: string, filter: { liveOnly: boolean; instanceUuid?: string; limit: number }): Promise<SessionView[]> {
    const rows = await (await this.databases.get(cellName)).sessions.list(filter);
    return rows.map(toView);
  }

  /**
   * Ends a live session: marks it ended and tells every proxy of the cell, which closes the
   * websocket with 1008 within a second.
   */
  async end(cellName: string, id: string): Promise<void> {
    const ended = await (await this.databases.get(cellName)).sessions.endByOperator(id);
    if (!ended) {
      throw new KeyholeError('SESSION_NOT_FOUND', `No live session with id '${id}' in cell '${cellName}'`, {
        details: { cell: cellName, id },
      });
    }
  }

  /**
   * The serial ports an instance's valid tokens point at, and whether each is free: a serial port
   * serves one live session at a time (Nova bug 1425640), so an agent can pick a free one.
   */
  async serialPorts(cellName: string, instanceUuid: string): Promise<SerialPortStatus[]> {
    const database = await this.databases.get(cellName);
    const targets = await database.tokens.listValidTargets(instanceUuid, 'serial', nowSeconds(this.clock));
    const live = await database.sessions.listLiveOnTargets(targets);
    return targets.map((target) => {
      const holder = live.find(
        (session) => session.consoleType === 'serial' && session.host === target.host && session.port === target.port,
      );
      return { ...target, free: holder === undefined, sessionId: holder?.id ?? null };
    });
  }
}

function toView(row: ConsoleSessionEntity): SessionView {
  return {
    id: row.id,
    tokenId: row.tokenId,
    tokenSource: row.tokenSource,
    fingerprint: row.tokenFingerprint,
    instanceUuid: row.instanceUuid,
    consoleType: row.consoleType,
    host: row.host,
    port: row.port,
    proxyInstance: row.proxyInstance,
    clientAddress: row.clientAddress,
    route: row.route,
    startedAt: row.startedAt.toISOString(),
    lastSeenAt: row.lastSeenAt.toISOString(),
    endedAt: row.endedAt?.toISOString() ?? null,
    closeReason: row.closeReason,
    bytesToClient: row.bytesToClient,
    bytesToConsole: row.bytesToUpstream,
  };
}

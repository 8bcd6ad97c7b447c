import { DaemonMethods, DoctorMethods } from './daemon.js';
import { DnsMethods } from './dns.js';
import { ImageMethods } from './image.js';
import { NetworkMethods } from './network.js';
import { VmMethods } from './vm.js';
import { WorkspaceMethods } from './workspace.js';
import { SessionMethods, StatsMethods } from './session.js';
import { SnapshotMethods } from './snapshot.js';
import { PoolMethods } from './pool.js';
import type { RpcMethod } from './common.js';

/** Every RPC method of the daemon; the daemon serves exactly these (one handler each). */
export const ALL_METHODS: readonly RpcMethod<any, any>[] = [ // eslint-disable-line @typescript-eslint/no-explicit-any
  ...Object.values(DaemonMethods),
  ...Object.values(DoctorMethods),
  ...Object.values(ImageMethods),
  ...Object.values(VmMethods),
  ...Object.values(WorkspaceMethods),
  ...Object.values(NetworkMethods),
  ...Object.values(DnsMethods),
  ...Object.values(StatsMethods),
  ...Object.values(SessionMethods),
  ...Object.values(SnapshotMethods),
  ...Object.values(PoolMethods),
];

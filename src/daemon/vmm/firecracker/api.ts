/**
 * A small client for Firecracker's HTTP API, which Firecracker serves on a unix socket (`--api-sock`).
 * Bodies are typed after the definitions of Firecracker's Swagger spec (firecracker.yaml, `definitions:`);
 * only the endpoints banger uses are modelled.
 */
import { request as httpRequest } from 'node:http';
import { BangerError, ErrorCode } from '../../../errors/index.js';

/** `BootSource`: the kernel, initrd and command line. Pre-boot only. */
export interface BootSource {
  kernel_image_path: string;
  initrd_path?: string;
  boot_args?: string;
}

/** `Drive` (virtio-block variant). Pre-boot only. */
export interface Drive {
  drive_id: string;
  path_on_host: string;
  is_root_device: boolean;
  is_read_only: boolean;
  cache_type?: 'Unsafe' | 'Writeback';
  io_engine?: 'Sync' | 'Async';
}

/** `MachineConfiguration`. Pre-boot only. */
export interface MachineConfiguration {
  /** 1..32. */
  vcpu_count: number;
  mem_size_mib: number;
  smt?: boolean;
  track_dirty_pages?: boolean;
}

/** `NetworkInterface`: a virtio-net device backed by a host tap. Pre-boot only. */
export interface NetworkInterface {
  iface_id: string;
  host_dev_name: string;
  guest_mac?: string;
}

/** `Vsock`: Firecracker listens on `uds_path` for host-initiated connections (`CONNECT <port>\n`). */
export interface Vsock {
  /** At least 3 (0-2 are reserved). */
  guest_cid: number;
  uds_path: string;
}

/** `SerialDevice`: where the guest's ttyS0 output goes (otherwise Firecracker's own stdout). */
export interface SerialDevice {
  serial_out_path?: string;
}

/** `Logger`: Firecracker's own log. */
export interface Logger {
  log_path?: string;
  level?: 'Error' | 'Warning' | 'Info' | 'Debug' | 'Trace' | 'Off';
  show_level?: boolean;
  show_log_origin?: boolean;
}

/** `SnapshotCreateParams`: the guest's memory and device state, written while it is paused. */
export interface SnapshotCreateParams {
  snapshot_path: string;
  mem_file_path: string;
  snapshot_type?: 'Full' | 'Diff';
}

/** `MemoryBackend`: where a restored guest's memory comes from (a file is mapped private, copy-on-write). */
export interface MemoryBackend {
  backend_type: 'File' | 'Uffd';
  backend_path: string;
}

/**
 * `SnapshotLoadParams`: only `/logger` and `/metrics` may come before it on a fresh process. The devices come
 * from the saved state, with the tap and the vsock socket overridable.
 */
export interface SnapshotLoadParams {
  snapshot_path: string;
  mem_backend: MemoryBackend;
  resume_vm?: boolean;
  network_overrides?: { iface_id: string; host_dev_name: string }[];
  vsock_override?: { uds_path: string };
}

export type ActionType = 'InstanceStart' | 'SendCtrlAltDel' | 'FlushMetrics';

/** `InstanceActionInfo`. */
export interface InstanceActionInfo {
  action_type: ActionType;
}

/** `InstanceInfo`, the answer of `GET /`. */
export interface InstanceInfo {
  app_name: string;
  id: string;
  state: 'Not started' | 'Running' | 'Paused';
  vmm_version: string;
}

/** One request of the boot sequence: what `firecrackerRequests` builds and `FirecrackerApi.send` sends. */
export type FirecrackerRequest =
  | { method: 'PUT'; path: '/boot-source'; body: BootSource }
  | { method: 'PUT'; path: `/drives/${string}`; body: Drive }
  | { method: 'PUT'; path: '/machine-config'; body: MachineConfiguration }
  | { method: 'PUT'; path: `/network-interfaces/${string}`; body: NetworkInterface }
  | { method: 'PUT'; path: '/vsock'; body: Vsock }
  | { method: 'PUT'; path: '/serial'; body: SerialDevice }
  | { method: 'PUT'; path: '/logger'; body: Logger }
  | { method: 'PUT'; path: '/actions'; body: InstanceActionInfo }
  | { method: 'PUT'; path: '/snapshot/load'; body: SnapshotLoadParams };

export interface ApiResponse {
  status: number;
  /** The parsed JSON body, or undefined for an empty body (204). */
  body: unknown;
}

export interface FirecrackerApiOptions {
  /** Per-request timeout. InstanceStart loads the kernel, so this is generous by default. */
  timeoutMs?: number;
}

/** Talks to one Firecracker process through its API socket. */
export class FirecrackerApi {
  private readonly timeoutMs: number;

  constructor(
    readonly socketPath: string,
    options: FirecrackerApiOptions = {},
  ) {
    this.timeoutMs = options.timeoutMs ?? 15_000;
  }

  /**
   * Sends one request and resolves on a 2xx answer. Any other answer rejects with a BangerError naming the
   * endpoint and Firecracker's `fault_message`; a socket that does not answer rejects with Unavailable.
   */
  async send(req: FirecrackerRequest, signal?: AbortSignal, timeoutMs?: number): Promise<void> {
    await this.call(req.method, req.path, req.body, signal, timeoutMs);
  }

  /** `GET /`: instance id, state and version. Also the probe that tells the API socket is up. */
  async describeInstance(signal?: AbortSignal, timeoutMs?: number): Promise<InstanceInfo> {
    const res = await this.call('GET', '/', undefined, signal, timeoutMs);
    return res.body as InstanceInfo;
  }

  /** `PUT /actions`. */
  async action(actionType: ActionType, signal?: AbortSignal): Promise<void> {
    await this.call('PUT', '/actions', { action_type: actionType }, signal);
  }

  /** One HTTP exchange; a non-2xx status becomes a BangerError. */
  async call(
    method: 'GET' | 'PUT' | 'PATCH',
    path: string,
    body?: unknown,
    signal?: AbortSignal,
    timeoutMs = this.timeoutMs,
  ): Promise<ApiResponse> {
    const endpoint = `${method} ${path}`;
    const res = await this.exchange(method, path, body, signal, timeoutMs);
    if (res.status >= 200 && res.status < 300) return res;
    const fault = faultMessage(res.body) ?? `HTTP ${res.status}`;
    throw new BangerError(
      res.status >= 500 ? ErrorCode.Internal : ErrorCode.FailedPrecondition,
      `firecracker ${endpoint} failed: ${fault}`,
    );
  }

  private exchange(
    method: string,
    path: string,
    body: unknown,
    signal: AbortSignal | undefined,
    timeoutMs: number,
  ): Promise<ApiResponse> {
    const endpoint = `${method} ${path}`;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<ApiResponse>((resolve, reject) => {
      const req = httpRequest(
        {
          socketPath: this.socketPath,
          method,
          path,
          headers: {
            Accept: 'application/json',
            ...(payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {}),
          },
          signal,
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (err) => reject(transportError(endpoint, this.socketPath, err)));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown;
            if (text.trim() !== '') {
              try {
                parsed = JSON.parse(text);
              } catch {
                parsed = { fault_message: text.trim() };
              }
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
        },
      );
      req.on('timeout', () => {
        req.destroy(
          new BangerError(ErrorCode.DeadlineExceeded, `firecracker ${endpoint}: no answer within ${timeoutMs} ms`),
        );
      });
      req.on('error', (err) => reject(transportError(endpoint, this.socketPath, err)));
      req.end(payload);
    });
  }
}

function faultMessage(body: unknown): string | undefined {
  if (typeof body === 'object' && body !== null && 'fault_message' in body) {
    const m = (body as { fault_message: unknown }).fault_message;
    if (typeof m === 'string' && m !== '') return m;
  }
  return undefined;
}

function transportError(endpoint: string, socketPath: string, err: Error): BangerError {
  if (err instanceof BangerError) return err;
  if (err.name === 'AbortError') return new BangerError(ErrorCode.Cancelled, `firecracker ${endpoint}: cancelled`);
  const code = (err as NodeJS.ErrnoException).code;
  return new BangerError(
    ErrorCode.Unavailable,
    `firecracker ${endpoint}: cannot reach the API socket ${socketPath} (${code ?? err.message})`,
    { cause: err },
  );
}

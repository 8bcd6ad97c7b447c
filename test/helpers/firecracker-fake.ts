/**
 * A fake Firecracker API server on a unix socket that validates every request against Firecracker's own
 * Swagger spec (test/fixtures/firecracker/firecracker.yaml, vendored with its Apache-2.0 NOTICE), the
 * way Firecracker's serde structs would refuse it: unknown paths and methods, bodies that do not match
 * the operation's schema, and unknown fields (Firecracker denies unknown fields) get a 400 with a
 * `fault_message` and are recorded as invalid, so a test can assert that the driver sent none.
 */
import { existsSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type ValidateFunction } from 'ajv';
import { parse as parseYaml } from 'yaml';

/** The vendored spec, resolved from this file: <repo>/test/helpers -> <repo>/test/fixtures/firecracker. */
export const FIRECRACKER_SPEC_PATH = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  'fixtures',
  'firecracker',
  'firecracker.yaml',
);

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

interface Operation {
  method: string;
  template: string;
  pattern: RegExp;
  /** Path parameter names, in order. */
  params: string[];
  body?: { required: boolean; validate: ValidateFunction };
}

export type ValidationResult =
  { ok: true; template: string; params: Record<string, string> } | { ok: false; error: string };

/** Every operation of the spec, with a compiled body validator. */
export class FirecrackerSpec {
  private readonly ops: Operation[] = [];

  constructor(specPath = FIRECRACKER_SPEC_PATH) {
    const spec = parseYaml(readFileSync(specPath, 'utf8')) as {
      swagger: string;
      paths: Record<
        string,
        Record<string, { parameters?: { in: string; name: string; required?: boolean; schema?: Json }[] }>
      >;
      definitions: Record<string, Json>;
    };
    if (spec.swagger !== '2.0') throw new Error(`${specPath}: expected a Swagger 2.0 spec`);
    const ajv = new Ajv({ strict: false, allErrors: true });
    // Swagger's numeric formats are checked; other formats (the MMDS address is given as a regex) pass.
    ajv.addFormat('int32', {
      type: 'number',
      validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31,
    });
    ajv.addFormat('int64', { type: 'number', validate: (n: number) => Number.isSafeInteger(n) });
    for (const f of collectFormats(spec.definitions)) if (f !== 'int32' && f !== 'int64') ajv.addFormat(f, true);
    const definitions = denyUnknownFields(spec.definitions) as Record<string, Json>;

    for (const [template, methods] of Object.entries(spec.paths)) {
      const params: string[] = [];
      const source = template
        .split('/')
        .map((seg) => {
          const m = /^\{(.+)\}$/.exec(seg);
          if (!m) return seg.replace(/[.*+?^$()|[\]\\]/g, '\\$&');
          params.push(m[1]!);
          return '([^/]+)';
        })
        .join('/');
      for (const [method, op] of Object.entries(methods)) {
        const bodyParam = op.parameters?.find((p) => p.in === 'body');
        this.ops.push({
          method: method.toUpperCase(),
          template,
          pattern: new RegExp(`^${source}$`),
          params,
          ...(bodyParam?.schema
            ? {
                body: {
                  required: bodyParam.required === true,
                  validate: ajv.compile({ ...(denyUnknownFields(bodyParam.schema) as object), definitions }),
                },
              }
            : {}),
        });
      }
    }
  }

  /** Checks method, path and body against the spec. `body` is the parsed JSON, or undefined when empty. */
  validate(method: string, path: string, body: unknown): ValidationResult {
    const byPath = this.ops.filter((o) => o.pattern.test(path));
    if (byPath.length === 0) return { ok: false, error: `Invalid request path: ${path} is not in the API spec` };
    const op = byPath.find((o) => o.method === method);
    if (!op) return { ok: false, error: `Invalid request method: ${method} ${path} is not in the API spec` };
    const values = op.pattern.exec(path)!.slice(1).map(decodeURIComponent);
    const params = Object.fromEntries(op.params.map((p, i) => [p, values[i]!]));
    if (op.body) {
      if (body === undefined) {
        if (op.body.required) return { ok: false, error: `${method} ${op.template}: missing request body` };
      } else if (!op.body.validate(body)) {
        const detail = (op.body.validate.errors ?? [])
          .map((e) => `${e.instancePath || 'body'} ${e.message ?? ''}`)
          .join('; ');
        return { ok: false, error: `${method} ${op.template}: invalid body: ${detail}` };
      }
    }
    return { ok: true, template: op.template, params };
  }
}

function collectFormats(node: unknown, out = new Set<string>()): Set<string> {
  if (Array.isArray(node)) for (const n of node) collectFormats(n, out);
  else if (typeof node === 'object' && node !== null) {
    for (const [k, v] of Object.entries(node)) {
      if (k === 'format' && typeof v === 'string') out.add(v);
      else collectFormats(v, out);
    }
  }
  return out;
}

/** Object schemas with `properties` and no `additionalProperties` get `additionalProperties: false`. */
function denyUnknownFields(node: Json): Json {
  if (Array.isArray(node)) return node.map(denyUnknownFields);
  if (typeof node !== 'object' || node === null) return node;
  const out: { [k: string]: Json } = {};
  for (const [k, v] of Object.entries(node))
    out[k] = k === 'properties' ? mapValues(v, denyUnknownFields) : denyUnknownFields(v);
  if ('properties' in node && !('additionalProperties' in node)) out.additionalProperties = false;
  return out;
}

function mapValues(v: Json, f: (x: Json) => Json): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return v;
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, f(x)]));
}

export interface RecordedRequest {
  method: string;
  path: string;
  body: unknown;
  status: number;
  /** The fault_message answered, for anything that was not a 2xx. */
  fault?: string;
}

export interface FirecrackerFakeOptions {
  socketPath: string;
  /** The instance id `GET /` reports (Firecracker's `--id`). */
  id?: string;
  /** Faults to answer instead of success, keyed by "METHOD /path" (e.g. "PUT /drives/work"). */
  faults?: Record<string, string>;
  /** Called after an accepted action (InstanceStart, SendCtrlAltDel). */
  onAction?: (actionType: string) => void;
  /** Called after every request, whatever its outcome. */
  onRequest?: (fake: FirecrackerFake) => void;
  /** The directory relative drive paths are opened from (Firecracker's working directory). Default: this process's. */
  cwd?: string;
  spec?: FirecrackerSpec;
}

/** Endpoints Firecracker accepts only before InstanceStart. */
const PRE_BOOT = new Set([
  '/boot-source',
  '/cpu-config',
  '/drives/{drive_id}',
  '/pmem/{id}',
  '/machine-config',
  '/network-interfaces/{iface_id}',
  '/vsock',
  '/entropy',
  '/serial',
  '/logger',
  '/metrics',
  '/mmds/config',
  '/balloon',
]);

export class FirecrackerFake {
  /** Requests that matched the spec (whatever the answer was: a valid request may still be refused). */
  readonly accepted: RecordedRequest[] = [];
  /** Requests that did not match the spec. A correct client sends none. */
  readonly invalid: RecordedRequest[] = [];
  state: 'Not started' | 'Running' | 'Paused' = 'Not started';
  /** Configuration as last PUT, by path (after a snapshot load: the saved one, with its overrides). */
  readonly config = new Map<string, unknown>();
  /** The files the guest's drives were opened from, absolute, at InstanceStart or snapshot load. */
  opened: string[] = [];
  private readonly faults: Map<string, string>;
  private readonly spec: FirecrackerSpec;
  private server: Server | undefined;

  private constructor(private readonly options: FirecrackerFakeOptions) {
    this.spec = options.spec ?? new FirecrackerSpec();
    this.faults = new Map(Object.entries(options.faults ?? {}));
  }

  static async listen(options: FirecrackerFakeOptions): Promise<FirecrackerFake> {
    const fake = new FirecrackerFake(options);
    const server = createServer((req, res) => fake.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.socketPath, () => resolve());
    });
    fake.server = server;
    return fake;
  }

  /**
   * Opens the drives of `config` as Firecracker does: each `path_on_host` as given, so a relative one from the
   * working directory. The absolute files, or a fault message for a drive that cannot be opened.
   */
  private openDrives(config: ReadonlyMap<string, unknown>): string[] | string {
    const out: string[] = [];
    for (const [p, d] of config) {
      if (!p.startsWith('/drives/')) continue;
      const file = resolve(this.options.cwd ?? process.cwd(), (d as { path_on_host: string }).path_on_host);
      if (!existsSync(file)) return `Unable to open the block device backing file ${(d as { path_on_host: string }).path_on_host}: no such file`;
      out.push(file);
    }
    return out;
  }

  /** Answers `METHOD path` (e.g. "PUT /machine-config") with a 400 carrying `message` from now on. */
  injectFault(endpoint: string, message: string): void {
    this.faults.set(endpoint, message);
  }

  /** `{method, path}` of the accepted requests, for asserting a sequence. */
  sequence(): string[] {
    return this.accepted.map((r) => `${r.method} ${r.path}`);
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(this.options.socketPath, { force: true });
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const method = req.method ?? '';
      const path = (req.url ?? '').split('?')[0]!;
      const text = Buffer.concat(chunks).toString('utf8');
      let body: unknown;
      let parseError: string | undefined;
      if (text.trim() !== '') {
        try {
          body = JSON.parse(text);
        } catch (e) {
          parseError = `body is not JSON: ${(e as Error).message}`;
        }
      }
      const record: RecordedRequest = { method, path, body, status: 0 };
      const answer = (status: number, payload?: unknown, fault?: string) => {
        record.status = status;
        if (fault !== undefined) record.fault = fault;
        res.writeHead(status, payload === undefined ? {} : { 'Content-Type': 'application/json' });
        res.end(payload === undefined ? undefined : JSON.stringify(payload));
        this.options.onRequest?.(this);
      };
      const refuse = (fault: string) => answer(400, { fault_message: fault }, fault);

      const v = parseError ? ({ ok: false, error: parseError } as const) : this.spec.validate(method, path, body);
      if (!v.ok) {
        this.invalid.push(record);
        refuse(v.error);
        return;
      }
      // Firecracker refuses a body whose id disagrees with the path.
      for (const [param, value] of Object.entries(v.params)) {
        const inBody = (body as Record<string, unknown> | undefined)?.[param];
        if (inBody !== undefined && inBody !== value) {
          this.invalid.push(record);
          refuse(`The id from the path (${value}) does not match the id from the body (${String(inBody)})`);
          return;
        }
      }
      this.accepted.push(record);

      const injected = this.faults.get(`${method} ${path}`);
      if (injected !== undefined) return refuse(injected);

      if (method === 'GET' && path === '/')
        return answer(200, {
          app_name: 'Firecracker',
          id: this.options.id ?? 'anonymous-instance',
          state: this.state,
          vmm_version: '0.0.0-fake',
        });
      if (method === 'PUT' && PRE_BOOT.has(v.template)) {
        if (this.state !== 'Not started')
          return refuse('The requested operation is not supported after starting the microVM.');
        if (v.template === '/drives/{drive_id}') {
          const drive = body as { drive_id: string; is_root_device: boolean };
          const otherRoot = [...this.config.entries()].some(
            ([p, b]) => p.startsWith('/drives/') && p !== path && (b as { is_root_device?: boolean }).is_root_device,
          );
          if (drive.is_root_device && otherRoot) return refuse('A root block device already exists!');
        }
        this.config.set(path, body);
        return answer(204);
      }
      if (method === 'PUT' && path === '/actions') {
        const action = (body as { action_type: string }).action_type;
        if (action === 'InstanceStart') {
          if (this.state !== 'Not started')
            return refuse('The requested operation is not supported after starting the microVM.');
          if (!this.config.has('/boot-source')) return refuse('Cannot start microvm without kernel configuration.');
          const hasRoot = [...this.config.entries()].some(
            ([p, b]) => p.startsWith('/drives/') && (b as { is_root_device?: boolean }).is_root_device,
          );
          if (!hasRoot) return refuse('Cannot start microvm without a root block device (required by this fake).');
          const drives = this.openDrives(this.config);
          if (typeof drives === 'string') return refuse(drives);
          this.opened = drives;
          this.state = 'Running';
        } else if (action === 'SendCtrlAltDel' && this.state !== 'Running') {
          return refuse('The requested operation is not supported before starting the microVM.');
        }
        answer(204);
        this.options.onAction?.(action);
        return;
      }
      if (method === 'PUT' && path === '/snapshot/create') {
        if (this.state !== 'Paused') return refuse('Cannot create a snapshot of a microVM that is not paused.');
        const b = body as { snapshot_path: string; mem_file_path: string };
        // Like Firecracker's state file, the fake's records every device as configured (drive paths as given).
        writeFileSync(b.snapshot_path, JSON.stringify({ fakeFirecrackerSnapshot: 1, config: Object.fromEntries(this.config) }));
        const mib = (this.config.get('/machine-config') as { mem_size_mib?: number } | undefined)?.mem_size_mib ?? 0;
        writeFileSync(b.mem_file_path, '');
        truncateSync(b.mem_file_path, mib * 1024 * 1024);
        return answer(204);
      }
      if (method === 'PUT' && path === '/snapshot/load') {
        const configured = [...this.config.keys()].filter((k) => k !== '/logger' && k !== '/metrics');
        if (this.state !== 'Not started' || configured.length > 0)
          return refuse('Loading a microVM snapshot not allowed after configuring boot-specific resources.');
        const b = body as {
          snapshot_path: string;
          mem_backend?: { backend_type: string; backend_path: string };
          resume_vm?: boolean;
          network_overrides?: { iface_id: string; host_dev_name: string }[];
          vsock_override?: { uds_path: string };
        };
        let saved: Map<string, unknown>;
        try {
          const text = readFileSync(b.snapshot_path, 'utf8');
          saved = new Map(Object.entries((JSON.parse(text) as { config: Record<string, unknown> }).config));
        } catch (e) {
          return refuse(`Load snapshot error: Cannot open snapshot file: ${(e as Error).message}`);
        }
        if (!b.mem_backend) return refuse('Load snapshot error: missing memory backend (the fake models mem_backend only)');
        if (b.mem_backend.backend_type === 'File' && !existsSync(b.mem_backend.backend_path))
          return refuse(`Load snapshot error: Cannot open the memory file: ${b.mem_backend.backend_path}`);
        for (const o of b.network_overrides ?? []) {
          const key = `/network-interfaces/${o.iface_id}`;
          if (!saved.has(key)) return refuse(`Invalid network override: the snapshot has no interface ${o.iface_id}`);
          saved.set(key, { ...(saved.get(key) as object), host_dev_name: o.host_dev_name });
        }
        if (b.vsock_override) {
          if (!saved.has('/vsock')) return refuse('Invalid vsock override: the snapshot has no vsock device');
          saved.set('/vsock', { ...(saved.get('/vsock') as object), uds_path: b.vsock_override.uds_path });
        }
        const drives = this.openDrives(saved);
        if (typeof drives === 'string') return refuse(`Load snapshot error: ${drives}`);
        this.opened = drives;
        for (const [k, v] of saved) this.config.set(k, v);
        this.state = b.resume_vm ? 'Running' : 'Paused';
        return answer(204);
      }
      if (method === 'PATCH' && path === '/vm') {
        if (this.state === 'Not started')
          return refuse('The requested operation is not supported before starting the microVM.');
        this.state = (body as { state: 'Paused' | 'Resumed' }).state === 'Paused' ? 'Paused' : 'Running';
        return answer(204);
      }
      answer(204);
    });
  }
}

/**
 * The golden (default) image on a real VM: the tools a developer expects are there, and Docker works under
 * software emulation with no network egress: an image made in the guest from a local root filesystem runs,
 * and `docker build` of a small Dockerfile works. dockerd starts on first use of `docker`.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { banger, bangerOk, e2eSteps } from '../helpers/cli.js';

const VM = 'e2e-golden';
const { step, printConsolesIfFailed } = e2eSteps();

interface ImageJson {
  params: {
    minimal?: boolean;
    contents?: { versions: Record<string, string>; mise: string | null };
    stepSeconds?: { step: string; seconds: number }[];
  };
}

void describe('golden image: developer tools and Docker (real VM)', { timeout: 1_500_000 }, () => {
  const guest = (script: string, timeoutMs = 600_000) =>
    bangerOk(['vm', 'exec', VM, '--', 'bash', '-c', script], 0, { timeoutMs });

  before(async () => {
    await banger(['vm', 'delete', '--force', VM]);
    await bangerOk(['vm', 'create', '--name', VM, '--start', '--cpus', '2', '--memory', '1G'], 0, {
      timeoutMs: 1_200_000,
    });
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', VM]);
  });

  step('image show lists what the default image holds and how long each build step took', async () => {
    const img = JSON.parse((await bangerOk(['image', 'show', 'default', '--json'])).stdout) as ImageJson;
    assert.equal(img.params.minimal, false);
    for (const p of ['docker.io', 'containerd', 'runc', 'gcc', 'git', 'nodejs'])
      assert.match(img.params.contents?.versions[p] ?? '', /\d/, p);
    assert.match(img.params.contents?.mise ?? '', /^\d{4}\.\d+\.\d+/);
    // From nothing (then saved as a base layer), or from a cached base layer; an image in a shared test cache
    // built before base layers existed bootstrapped without saving one.
    const steps = img.params.stepSeconds?.map((s) => s.step) ?? [];
    assert.deepEqual(steps.slice(-5), ['install mise', 'configure guest', 'build initrd', 'make ext4', 'checksum']);
    assert.ok(
      [
        'bootstrap rootfs,save base layer',
        'restore base layer',
        'restore base layer,install extra packages',
        'bootstrap rootfs',
      ].includes(steps.slice(0, -5).join(',')),
      steps.join(', '),
    );
    const text = (await bangerOk(['image', 'show', 'default'])).stdout;
    assert.match(text, /Versions: mise \d.*docker\.io \d/);
    assert.match(text, /Steps: {4}(bootstrap rootfs|restore base layer) [\d.]+ s/);
  });

  step('gcc, make, curl, python3, jq and the everyday tools are there', async () => {
    const r = await guest(
      'set -e; for c in gcc make curl python3 jq rg tmux unzip xz less vi git mise docker; do command -v "$c" >/dev/null || { echo "missing $c"; exit 1; }; done; ' +
        'printf "int main(void){return 42;}" > /tmp/t.c && gcc -o /tmp/t /tmp/t.c && { /tmp/t || echo "gcc-built exit $?"; }; ' +
        'curl --version | head -1; echo "{\\"a\\":[1,2]}" | jq -c .a; python3 -c "print(6*7)"',
    );
    assert.match(r.stdout, /gcc-built exit 42/);
    assert.match(r.stdout, /^curl \d/m);
    assert.match(r.stdout, /^\[1,2\]$/m);
    assert.match(r.stdout, /^42$/m);
  });

  step('docker starts on first use and runs an image imported from a local root filesystem', async () => {
    assert.equal((await guest('pgrep -x dockerd || echo none')).stdout, 'none\n', 'nothing of Docker runs at boot');
    const r = await guest(
      'set -e; rm -rf /tmp/r; mkdir -p /tmp/r/bin; cp /bin/busybox /tmp/r/bin/; ' +
        'tar -C /tmp/r -c . | docker import - e2e-bb:1 >/dev/null; docker run --rm e2e-bb:1 /bin/busybox echo ok',
      900_000,
    );
    assert.equal(r.stdout, 'ok\n');
    // Its data is on the VM's work disk, which `--disk-size` sizes.
    assert.equal((await guest("docker info --format '{{.DockerRootDir}}'")).stdout, '/root/.local/share/docker\n');
  });

  step('docker build of a small local Dockerfile works', async () => {
    const r = await guest(
      'set -e; rm -rf /tmp/b; mkdir /tmp/b; cd /tmp/b; ' +
        `printf '%s\\n' 'FROM e2e-bb:1' 'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox echo built-in-docker > /built"]' 'CMD ["/bin/busybox", "cat", "/built"]' > Dockerfile; ` +
        'docker build -q -t e2e-bb:2 . >/dev/null; docker run --rm e2e-bb:2',
      900_000,
    );
    assert.equal(r.stdout, 'built-in-docker\n');
  });
});

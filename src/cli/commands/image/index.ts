import type { Command } from 'commander';
import { ImageMethods, type ImageInfo } from '../../../protocol/image.js';
import type { CliContext } from '../../context.js';
import { formatBytes, out, table } from '../../output.js';

function details(i: ImageInfo): string {
  const lines = [
    `Name:     ${i.name}`,
    `ID:       ${i.id}`,
    `Status:   ${i.status}${i.error ? ` (${i.error})` : ''}`,
    `Kernel:   ${i.kernelVersion ?? '-'}`,
    `Built:    ${i.createdAt}${i.buildSeconds ? ` in ${Math.round(i.buildSeconds)} s` : ''}`,
    ...(i.params.stepSeconds?.length
      ? [`Steps:    ${i.params.stepSeconds.map((st) => `${st.step} ${st.seconds} s`).join(', ')}`]
      : []),
    `Suite:    ${i.params.suite} from ${i.params.mirror || '-'}`,
    `Set:      ${i.params.minimal ? 'minimal (sshd, git, mise, the guest agent)' : 'developer (Docker, build-essential, curl, jq, ripgrep, tmux... on the base set)'}`,
    `Added:    ${i.params.packages.length ? i.params.packages.join(' ') : '-'}`,
    ...contents(i),
    `Used by:  ${i.usedBy.length ? i.usedBy.join(', ') : '-'}`,
    'Files:',
    ...i.files.map((f) => `  ${f.role.padEnd(7)} ${formatBytes(f.sizeBytes).padStart(10)}  sha256:${f.sha256}  ${f.path}`),
  ];
  return lines.join('\n');
}

/** `Versions:` lines: mise and the notable packages the image has (Docker, Node, git, gcc...). */
function contents(i: ImageInfo): string[] {
  const c = i.params.contents;
  if (!c) return [];
  const v = [...(c.mise ? [`mise ${c.mise}`] : []), ...Object.entries(c.versions).map(([p, ver]) => `${p} ${ver}`)];
  return v.length ? [`Versions: ${v.join(', ')}`] : [];
}

export function register(program: Command, ctx: CliContext): void {
  const image = program.command('image').description('build and manage guest images');

  image
    .command('build')
    .description('build a bootable image from Debian packages (kernel, initrd, ext4 root with ssh, git, mise, Docker)')
    .argument('[name]', 'image name', 'default')
    .option('--packages <list>', 'extra Debian packages, comma or space separated', '')
    .option('--minimal', 'only sshd, git, mise and the guest agent: no Docker, build-essential or other tools')
    .option('--force', 'rebuild even if it exists (refused while VMs use it)')
    .option('--no-cache', 'bootstrap from nothing, not from a cached base layer (a fresh layer is saved)')
    .option('--json', 'print the image as JSON; progress as JSON lines on stderr')
    .addHelpText(
      'after',
      `
Every image has sshd, git, mise, Node (for the guest agent) and python3. Unless --minimal it also has
Docker (docker.io; dockerd starts on first use of \`docker\`, its data on the VM's work disk), build-essential,
curl, jq, ripgrep, unzip, xz-utils, less, vim-tiny and tmux. Downloaded packages are cached in
$BANGER_HOME/cache/apt-archives, so a rebuild fetches only what is new (delete that folder to reclaim space).
A build keeps its bootstrapped Debian tree as a base layer in $BANGER_HOME/cache/layers (the 3 most recently
used, at most 7 days old): a later build whose packages include a layer's starts from it and installs only
the rest (steps "restore base layer", "install extra packages"). --no-cache bootstraps from nothing.
Without root (a normal user's daemon) mmdebstrap runs in its unshare mode: that needs the uidmap package and
subordinate ids for the user (\`banger doctor\` checks both and prints the fix); base layers are not used then.

Examples:
  banger image build                              the default image (built on first use anyway)
  banger image build py --packages python3-venv   the default set plus python3-venv
  banger image build small --minimal              the small image (faster to build)`,
    )
    .action(async (name: string, o: { packages: string; minimal?: boolean; force?: boolean; cache: boolean; json?: boolean }) => {
      const packages = o.packages.split(/[\s,]+/).filter(Boolean);
      const i = await ctx.call(
        ImageMethods.build,
        { name, packages, minimal: o.minimal, force: o.force, ...(o.cache ? {} : { noCache: true }) },
        { json: o.json, progress: true },
      );
      if (o.json) out.json(i);
      else out.line(details(i));
    });

  image
    .command('list')
    .alias('ls')
    .description('list images')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const list = await ctx.call(ImageMethods.list, undefined);
      if (o.json) return out.json(list);
      if (list.length === 0) return out.info('no images yet: `banger image build` builds the default one');
      const size = (i: ImageInfo) => formatBytes(i.files.reduce((a, f) => a + f.sizeBytes, 0));
      out.line(
        table(
          ['NAME', 'STATUS', 'KERNEL', 'SIZE', 'USED BY', 'CREATED'],
          list.map((i) => [i.name, i.status, i.kernelVersion ?? '-', size(i), i.usedBy.join(',') || '-', i.createdAt]),
        ),
      );
    });

  image
    .command('show')
    .description("show an image's files, checksums and build parameters")
    .argument('<image>', 'image name')
    .option('--json', 'print as JSON')
    .action(async (name: string, o: { json?: boolean }) => {
      const i = await ctx.call(ImageMethods.show, { name });
      if (o.json) out.json(i);
      else out.line(details(i));
    });

  image
    .command('delete')
    .alias('rm')
    .description('delete an image (refused while a VM uses it)')
    .argument('<image>', 'image name')
    .action(async (name: string) => {
      await ctx.call(ImageMethods.delete, { name });
      out.info(`deleted image ${name}`);
    });
}

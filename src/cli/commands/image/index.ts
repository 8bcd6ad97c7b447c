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
    `Suite:    ${i.params.suite} from ${i.params.mirror || '-'}`,
    `Packages: ${i.params.packages.length ? i.params.packages.join(' ') : '(base set only)'}`,
    `Used by:  ${i.usedBy.length ? i.usedBy.join(', ') : '-'}`,
    'Files:',
    ...i.files.map((f) => `  ${f.role.padEnd(7)} ${formatBytes(f.sizeBytes).padStart(10)}  sha256:${f.sha256}  ${f.path}`),
  ];
  return lines.join('\n');
}

export function register(program: Command, ctx: CliContext): void {
  const image = program.command('image').description('build and manage guest images');

  image
    .command('build')
    .description('build a bootable image from Debian packages (kernel, initrd, ext4 root with ssh, git, mise)')
    .argument('[name]', 'image name', 'default')
    .option('--packages <list>', 'extra Debian packages, comma or space separated', '')
    .option('--force', 'rebuild even if it exists (refused while VMs use it)')
    .option('--json', 'print the image as JSON; progress as JSON lines on stderr')
    .action(async (name: string, o: { packages: string; force?: boolean; json?: boolean }) => {
      const packages = o.packages.split(/[\s,]+/).filter(Boolean);
      const i = await ctx.call(ImageMethods.build, { name, packages, force: o.force }, { json: o.json, progress: true });
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

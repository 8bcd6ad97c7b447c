import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'scripts/**', 'eslint.config.js', 'test/fixtures/**/*.mjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          allowForKnownSafeCalls: [
            { from: 'package', package: 'node:test', name: ['test', 'it', 'describe', 'suite', 'before', 'after'] },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    // Only the CLI's entry (main.ts, program.ts, and fast-exec.ts, its `vm exec` fast path) and cli/output.ts talk to
    // the terminal and decide the exit code.
    files: ['src/**/*.ts'],
    ignores: ['src/cli/main.ts', 'src/cli/program.ts', 'src/cli/fast-exec.ts', 'src/cli/fast-prepare.ts', 'src/cli/output.ts', 'src/daemon/main.ts'],
    rules: {
      'no-console': 'error',
      'no-restricted-properties': ['error', { object: 'process', property: 'exit', message: 'throw a BangerError; cli/main.ts decides the exit code' }],
    },
  },
  {
    // The CLI never imports daemon code.
    files: ['src/cli/**/*.ts', 'src/client/**/*.ts', 'src/protocol/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: ['../daemon/**', '../../daemon/**', '../../../daemon/**', '../../../../daemon/**'], message: 'the CLI talks to the daemon over RPC only' }] }],
    },
  },
);

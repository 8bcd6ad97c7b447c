/**
 * When a command in a workspace runs under `mise exec`: the rule shared by the workspace's shell line
 * (daemon/services/workspace/guest-scripts.ts, over SSH or an older agent) and the guest agent's exec with
 * `mise: true` (agent/mise.ts). mise is used when it is installed and its config may apply, that is when
 *  - a variable named MISE_* or RTX_* is set, other than the ones banger sets in every guest (GUEST_MISE_ENV);
 *  - /etc/mise, or `mise` in the config directory ($XDG_CONFIG_HOME, else ~/.config), exists;
 *  - the command's directory, a directory above it or the home directory holds a name starting with one of
 *    MISE_NAME_PREFIXES, or a `.config` directory there holds one starting with `mise`.
 * Idiomatic version files (.nvmrc...) count only once a setting enables them, and a setting lives in one of
 * those files or variables. A name that only looks like mise's costs a mise start, never a missed config:
 * starting mise (a 150 MB binary) costs 100-400 ms in a TCG guest.
 */

/** mise's variables every banger guest gets (daemon/guest/init/scripts.ts GUEST_ENVIRONMENT): they select no config. */
export const GUEST_MISE_ENV: Readonly<Record<string, string>> = {
  // mise otherwise waits ~10 s on an update check that cannot reach out.
  MISE_OFFLINE: '1',
};

/** Names of variables that may make mise apply (see GUEST_MISE_ENV for the exceptions). */
export const MISE_VAR_PREFIXES = ['MISE_', 'RTX_'] as const;

/** In a directory: mise.toml, mise/, mise.local.toml, .mise.toml, .mise/, .miserc.toml, .tool-versions, .rtx.toml... */
export const MISE_NAME_PREFIXES = ['mise', '.mise', '.tool-versions', '.rtx'] as const;

/** In a directory's `.config`: mise.toml, mise/ (config.toml, conf.d). */
export const MISE_DOT_CONFIG_PREFIX = 'mise';

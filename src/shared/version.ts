export const VERSION = '0.1.0';

declare const __BANGER_BUILD__: string | undefined;

/**
 * Which build of banger this is: a hash of the sources `npm run build` bundled ("source" when run from
 * TypeScript directly). A CLI that finds a daemon of another build restarts it when it is idle (see launcher).
 */
export const BUILD_ID: string = typeof __BANGER_BUILD__ === 'string' ? __BANGER_BUILD__ : 'source';

/**
 * Node has no pseudo-terminal without a native module, so a `pty` exec runs its command under this python3
 * program (the standard library's `pty`). argv: ROWS COLS COMMAND... It copies stdin to the terminal and the
 * terminal to stdout, reads "ROWS COLS" lines on fd 3 (or $BANGER_PTY_CONTROL_FD) to resize (the kernel then sends SIGWINCH), forwards
 * the signals it gets to the terminal's process group, and ends the way the command ended: the same exit
 * code, or killed by the same signal.
 */
export const PTY_HELPER_SOURCE = String.raw`
import os, sys, pty, select, signal, struct, fcntl, termios
rows, cols, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
control = int(os.environ.pop("BANGER_PTY_CONTROL_FD", "3"))
pid, fd = pty.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(2, ("banger-agent: %s: %s\r\n" % (argv[0], e.strerror)).encode())
    os._exit(127)
def put(f, d):
    while d:
        d = d[os.write(f, d):]
def winsize(r, c):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", r, c, 0, 0))
winsize(rows, cols)
def forward(n, _f):
    try:
        os.killpg(pid, n)
    except OSError:
        pass
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT):
    signal.signal(s, forward)
inputs = [fd, 0, control]
ctl = b""
while fd in inputs:
    ready, _, _ = select.select(inputs, [], [])
    for r in ready:
        try:
            data = os.read(r, 65536)
        except OSError:
            data = b""
        if r == fd:
            if not data:
                inputs.remove(fd)
            else:
                put(1, data)
        elif r == 0:
            if not data:
                inputs.remove(0)
            else:
                put(fd, data)
        else:
            if not data:
                inputs.remove(control)
            ctl += data
            while b"\n" in ctl:
                line, ctl = ctl.split(b"\n", 1)
                try:
                    r2, c2 = line.split()
                    winsize(int(r2), int(c2))
                except (ValueError, OSError):
                    pass
_, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
sys.exit(os.WEXITSTATUS(status))
`;

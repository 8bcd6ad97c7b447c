/**
 * `banger-spawner`: a small static C program the image build compiles (with the host's gcc) and installs
 * next to the agent. The agent keeps one running and asks it to start exec commands, so the agent's large
 * Node process never forks (a fork of it costs ~40 ms under TCG; this program's costs about 1 ms).
 *
 *   banger-spawner SOCKET   listens on the unix socket SOCKET, prints "ready\n" on stdout, and exits once
 *                           its stdin reaches end-of-file (the agent is gone).
 *
 * Node cannot pass descriptors over a unix socket, so each stream of a command is a connection of its own:
 * the command's stdin, stdout and stderr ARE those connections (as with Node's own spawn, whose pipes are
 * socketpairs). Every connection starts with 8 bytes: the request id (u32 LE), the role (0 control,
 * 1 stdin, 2 stdout, 3 stderr) and 3 zero bytes. The control connection then carries the request: u32 LE
 * length, then NUL-terminated strings: flags ("i": a stdin connection follows; otherwise stdin is
 * /dev/null), cwd, argc, argv..., envc, env.... Once the control connection and the streams it needs are
 * there, the command starts in a session of its own (pid = process group) with default signal handling,
 * and the spawner answers on the control connection with 5-byte messages: 'P' pid, or 'D' errno (no such
 * directory) / 'E' errno (the command could not be executed), then 'X' wait-status once it has exited.
 * Closing the control connection early does not stop the command (the agent signals it itself).
 */
export const SPAWNER_SOURCE = String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXC 2048
#define MAXREQ (1 << 20)

extern char **environ;

struct conn {
  int fd;
  int got;        /* header bytes read */
  uint8_t hdr[12];
  uint32_t id;
  int role;       /* -1 until the header is in */
  uint32_t len;   /* control: request length, 0 until known */
  uint32_t have;
  char *buf;
  pid_t pid;      /* control: the command, once started */
};

static struct conn c[MAXC];
static int nconn;

static void drop(int i) {
  if (c[i].fd >= 0) close(c[i].fd);
  free(c[i].buf);
  c[i] = c[--nconn];
}

static int find(uint32_t id, int role) {
  for (int i = 0; i < nconn; i++)
    if (c[i].role == role && c[i].id == id && c[i].pid == 0) return i;
  return -1;
}

static void say(int fd, char kind, int32_t v) {
  char m[5];
  m[0] = kind;
  memcpy(m + 1, &v, 4);
  ssize_t n;
  do n = write(fd, m, 5); while (n < 0 && errno == EINTR);
}

/* Splits the request into strings; 0 on success. */
static int parse(char *b, uint32_t len, char ***out) {
  size_t cap = 16, n = 0;
  char **v = malloc(cap * sizeof *v);
  if (!v) return -1;
  uint32_t p = 0;
  while (p < len) {
    char *s = b + p;
    char *z = memchr(s, 0, len - p);
    if (!z) { free(v); return -1; }
    if (n + 2 > cap) {
      cap *= 2;
      char **w = realloc(v, cap * sizeof *v);
      if (!w) { free(v); return -1; }
      v = w;
    }
    v[n++] = s;
    p = (uint32_t)(z - b) + 1;
  }
  v[n] = NULL;
  *out = v;
  return 0;
}

/* Answers 'E' errno and forgets request ci and its streams (closing them: the agent sees end-of-file). */
static void fail(int ci, int e) {
  uint32_t id = c[ci].id;
  say(c[ci].fd, 'E', e);
  drop(ci);
  for (int i = nconn - 1; i >= 0; i--)
    if (i < nconn && c[i].id == id && c[i].role > 0 && c[i].pid == 0) drop(i);
}

static void start(int ci) {
  struct conn *k = &c[ci];
  char **s = NULL;
  if (parse(k->buf, k->len, &s) != 0) { fail(ci, EINVAL); return; }
  size_t n = 0;
  while (s[n]) n++;
  if (n < 4) { free(s); fail(ci, EINVAL); return; }
  int wants_in = strchr(s[0], 'i') != NULL;
  char *cwd = s[1];
  long argc = strtol(s[2], NULL, 10);
  if (argc < 1 || (size_t)argc + 4 > n) { free(s); fail(ci, EINVAL); return; }
  char **argv = s + 3;
  long envc = strtol(s[3 + argc], NULL, 10);
  if (envc < 0 || (size_t)(4 + argc + envc) > n) { free(s); fail(ci, EINVAL); return; }
  char **envp = s + 4 + argc;
  int in = wants_in ? find(k->id, 1) : -1, out = find(k->id, 2), err = find(k->id, 3);
  int infd = in >= 0 ? c[in].fd : open("/dev/null", O_RDONLY | O_CLOEXEC);
  int ep[2];
  if (infd < 0 || pipe2(ep, O_CLOEXEC) != 0) {
    int e = errno;
    if (in < 0 && infd >= 0) close(infd);
    free(s);
    fail(ci, e);
    return;
  }
  char *saved = argv[argc];
  argv[argc] = NULL;
  envp[envc] = NULL;
  pid_t pid = fork();
  if (pid == 0) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
    setsid();
    char kind = 'D';
    if (chdir(cwd) == 0) {
      kind = 'E';
      if (dup2(infd, 0) >= 0 && dup2(c[out].fd, 1) >= 0 && dup2(c[err].fd, 2) >= 0) {
        environ = envp;
        execvp(argv[0], argv);
      }
    }
    char m[5];
    int32_t e = errno;
    m[0] = kind;
    memcpy(m + 1, &e, 4);
    if (write(ep[1], m, 5) < 0) {}
    _exit(127);
  }
  argv[argc] = saved;
  free(s);
  close(ep[1]);
  if (in < 0) close(infd);
  if (pid < 0) { int e = errno; close(ep[0]); fail(ci, e); return; }
  char m[5];
  ssize_t r;
  do r = read(ep[0], m, 5); while (r < 0 && errno == EINTR);
  close(ep[0]);
  /* The streams are the command's now; the agent holds the other ends. */
  int ids[3] = {in, out, err};
  for (int j = 0; j < 3; j++)
    if (ids[j] >= 0) { close(c[ids[j]].fd); c[ids[j]].fd = -1; }
  if (r == 5) {
    int32_t e;
    memcpy(&e, m + 1, 4);
    say(k->fd, m[0], e); /* the child exits 127 and is reaped; nobody waits for its status */
    k->pid = -pid;
  } else {
    k->pid = pid;
    say(k->fd, 'P', pid);
  }
  /* Drop the stream entries (their descriptors are closed). Dropping moves entries, k among them: by id. */
  uint32_t id = k->id;
  for (int i = nconn - 1; i >= 0; i--)
    if (i < nconn && c[i].fd < 0 && c[i].id == id && c[i].role > 0) drop(i);
}

/* Starts every control request whose streams have all arrived. */
static void try_start(void) {
  for (int i = 0; i < nconn; i++) {
    struct conn *k = &c[i];
    if (k->role != 0 || k->pid != 0 || k->len == 0 || k->have < k->len) continue;
    int wants_in = memchr(k->buf, 'i', strnlen(k->buf, k->len)) != NULL;
    if ((wants_in && find(k->id, 1) < 0) || find(k->id, 2) < 0 || find(k->id, 3) < 0) continue;
    start(i);
    i = -1; /* the table changed */
  }
}

static void reap(void) {
  int st;
  pid_t p;
  while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
    for (int i = 0; i < nconn; i++) {
      if (c[i].role == 0 && (c[i].pid == p || c[i].pid == -p)) {
        if (c[i].pid == p) say(c[i].fd, 'X', st);
        drop(i);
        break;
      }
    }
  }
}

/* Reads what is there on connection i; -1 when it is to be dropped. */
static int readable(int i) {
  struct conn *k = &c[i];
  if (k->role < 0) {
    /* The header: 8 bytes, 12 for a control connection (its request length follows). Never more, so a
       stdin connection's first bytes stay in the socket for the command. */
    int need = k->got >= 8 && k->hdr[4] == 0 ? 12 : 8;
    ssize_t r = read(k->fd, k->hdr + k->got, need - k->got);
    if (r <= 0) return r < 0 && errno == EINTR ? 0 : -1;
    k->got += r;
    if (k->got < 8 || (k->hdr[4] == 0 && k->got < 12)) return 0;
    if (k->hdr[4] > 3) return -1;
    memcpy(&k->id, k->hdr, 4);
    if (k->hdr[4] == 0) {
      memcpy(&k->len, k->hdr + 8, 4);
      if (k->len == 0 || k->len > MAXREQ) return -1;
      k->buf = malloc(k->len);
      if (!k->buf) return -1;
    }
    k->role = k->hdr[4];
    return 0;
  }
  if (k->role != 0 || k->pid != 0) {
    /* A started control connection: only end-of-file matters (streams are not polled for input). */
    char tmp[64];
    ssize_t r = read(k->fd, tmp, sizeof tmp);
    if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) return -1;
    return 0;
  }
  ssize_t r = read(k->fd, k->buf + k->have, k->len - k->have);
  if (r <= 0) return r < 0 && errno == EINTR ? 0 : -1;
  k->have += r;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: banger-spawner SOCKET\n"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  struct rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  sigset_t ch;
  sigemptyset(&ch);
  sigaddset(&ch, SIGCHLD);
  sigprocmask(SIG_BLOCK, &ch, NULL);
  int sfd = signalfd(-1, &ch, SFD_CLOEXEC | SFD_NONBLOCK);
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(argv[1]) >= sizeof a.sun_path) return 2;
  strcpy(a.sun_path, argv[1]);
  unlink(argv[1]);
  if (sfd < 0 || l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1024) != 0) {
    perror("banger-spawner");
    return 1;
  }
  chmod(argv[1], 0600);
  if (write(1, "ready\n", 6) != 6) return 1;
  static struct pollfd p[MAXC + 3];
  for (;;) {
    p[0] = (struct pollfd){.fd = 0, .events = POLLIN};
    p[1] = (struct pollfd){.fd = sfd, .events = POLLIN};
    p[2] = (struct pollfd){.fd = nconn < MAXC ? l : -1, .events = POLLIN};
    /* A stream waiting for its command is watched for hang-up only: its data is the command's. */
    for (int i = 0; i < nconn; i++)
      p[3 + i] = (struct pollfd){.fd = c[i].fd, .events = c[i].role > 0 ? 0 : POLLIN};
    int n0 = nconn;
    if (poll(p, 3 + n0, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (p[0].revents) {
      char tmp[64];
      ssize_t r = read(0, tmp, sizeof tmp);
      if (r == 0 || (r < 0 && errno != EINTR)) { unlink(argv[1]); return 0; }
    }
    if (p[1].revents) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) > 0) {}
      reap();
    }
    /* Connections in reverse, so dropping one (the last moves into its slot) skips none. */
    for (int i = n0 - 1; i >= 0; i--) {
      if (i >= nconn || p[3 + i].fd != c[i].fd || !p[3 + i].revents) continue;
      if (c[i].role > 0 || readable(i) < 0) drop(i);
    }
    if (p[2].revents) {
      int fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) c[nconn++] = (struct conn){.fd = fd, .role = -1};
      else if (errno == EMFILE || errno == ENFILE) poll(NULL, 0, 10); /* not a busy loop while out of fds */
    }
    try_start();
    reap();
  }
}
`;

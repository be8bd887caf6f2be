/*
 * wsgate-init: the shim and the init of one workspace container.
 *
 * The launcher runs this program on the host for each workspace start.  The
 * process it starts (the shim) stays outside the workspace: it joins the
 * workspace's cgroups, clones the container (new user, PID, mount, network,
 * UTS and IPC namespaces), writes its uid/gid maps, hands it an id-mapped view
 * of the base, keeps the bounded output log, and records the exit status.
 * The clone becomes PID 1 of the workspace: it builds the root filesystem,
 * pivots into it, starts the main command, reaps zombies, forwards signals,
 * exits with the main command, and answers the gateway on a unix socket with
 * fresh TCP sockets created inside the workspace's network namespace (passed
 * with SCM_RIGHTS), so the gateway's connections to workspace ports are plain
 * kernel sockets with no relay in between.
 *
 * Usage: wsgate-init -d DIR -n ID -b BASE [-u UID -g GID -k COUNT]
 *                    [-c CGROUP_PROCS]... [-l LOG_BYTES] -- ARGV...
 * DIR holds upper/ work/ lower/ root/ (prepared by the launcher).  With -k 0
 * (the default) the container's root maps to the caller's own uid: the mode
 * for a gateway that runs unprivileged.  The environment of the main command
 * is read from stdin (NUL-separated KEY=VALUE) and never written anywhere.
 * The shim prints one line on stdout, "ok <init-host-pid>" or "error <why>",
 * then detaches.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif
#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

struct mount_attr_v0 {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};

#define MAX_CGROUPS 8
#define MAX_MASKS 64
#define MAX_CLIENTS 64
#define MAX_ENV (1 << 20)

static const char *dir, *ident, *base;
static long uid_base = -1, gid_base = -1, id_count;
static const char *cgroups[MAX_CGROUPS];
static int n_cgroups;
static long log_cap = 1 << 20;
static char **cmd;
static char *envbuf;
static size_t envlen;
static int sync_sock[2];  /* shim <-> clone */
static int out_pipe[2];   /* main command's stdout/stderr -> shim */
static int ctl_fd = -1;   /* listening unix socket, used by the init */

static void die_to(int fd, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
    if (errno) n += snprintf(msg + n, sizeof msg - n, ": %s", strerror(errno));
    if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
    if (write(fd, msg, n) < 0) { /* nothing left to tell */ }
    _exit(127);
}

#define FAIL(...) do { errno = 0; die_to(sync_sock[1], __VA_ARGS__); } while (0)
#define FAIL_ERRNO(...) die_to(sync_sock[1], __VA_ARGS__)

static int write_file(const char *path, const char *data) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, data, strlen(data));
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)strlen(data) ? 0 : -1;
}

static int write_atomic(const char *name, const char *data) {
    char tmp[PATH_MAX], path[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return -1;
    if (write(fd, data, strlen(data)) < 0 || fsync(fd) < 0) { close(fd); return -1; }
    close(fd);
    return rename(tmp, path);
}

/* ---- inside the container ---------------------------------------------- */

static void mkdir_p(const char *path, mode_t mode) {
    if (mkdir(path, mode) < 0 && errno != EEXIST) FAIL_ERRNO("mkdir %s", path);
}

static void bind_dev(const char *root, const char *name) {
    char src[64], dst[PATH_MAX];
    snprintf(src, sizeof src, "/dev/%s", name);
    snprintf(dst, sizeof dst, "%s/dev/%s", root, name);
    int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) FAIL_ERRNO("create %s", dst);
    close(fd);
    if (mount(src, dst, NULL, MS_BIND, NULL) < 0) FAIL_ERRNO("bind %s", src);
}

static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) FAIL_ERRNO("socket");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) FAIL_ERRNO("SIOCGIFFLAGS lo");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) FAIL_ERRNO("SIOCSIFFLAGS lo");
    close(s);
}

static int send_fd(int sock, int fd, char byte) {
    char control[CMSG_SPACE(sizeof(int))];
    memset(control, 0, sizeof control);
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) == 1 ? 0 : -1;
}

static void build_root(void) {
    /* The shim mounted the overlay on DIR/root; this adds what must belong to
     * the container's own namespaces.  Paths are relative to DIR, the working
     * directory the clone inherits (moved into its mount namespace by the
     * kernel): DIR's parents need not be searchable by the container's root. */
    const char *root = "root";
    char path[PATH_MAX];

    snprintf(path, sizeof path, "%s/proc", root);
    mkdir_p(path, 0555);
    if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) FAIL_ERRNO("mount /proc");

    snprintf(path, sizeof path, "%s/sys", root);
    mkdir_p(path, 0555);
    /* sysfs of the workspace's own network namespace; optional (some hosts refuse it). */
    if (mount("sysfs", path, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) errno = 0;

    snprintf(path, sizeof path, "%s/dev", root);
    mkdir_p(path, 0755);
    if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k") < 0) FAIL_ERRNO("mount /dev");
    const char *devs[] = {"null", "zero", "full", "random", "urandom", "tty"};
    for (size_t i = 0; i < sizeof devs / sizeof *devs; i++) bind_dev(root, devs[i]);
    snprintf(path, sizeof path, "%s/dev/pts", root);
    mkdir_p(path, 0755);
    if (mount("devpts", path, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") < 0)
        FAIL_ERRNO("mount /dev/pts");
    snprintf(path, sizeof path, "%s/dev/ptmx", root);
    if (symlink("pts/ptmx", path) < 0) FAIL_ERRNO("symlink /dev/ptmx");
    snprintf(path, sizeof path, "%s/dev/shm", root);
    mkdir_p(path, 01777);
    if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) FAIL_ERRNO("mount /dev/shm");
    const char *links[][2] = {{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
                              {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}};
    for (size_t i = 0; i < sizeof links / sizeof *links; i++) {
        snprintf(path, sizeof path, "%s/dev/%s", root, links[i][1]);
        if (symlink(links[i][0], path) < 0) FAIL_ERRNO("symlink %s", path);
    }

    snprintf(path, sizeof path, "%s/tmp", root);
    mkdir_p(path, 01777);
    if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) FAIL_ERRNO("mount /tmp");
    /* pivot_root refuses a mount locked to its parent, as the shim's overlay is
     * here: a recursive bind on top of it is not (and keeps the masks locked). */
    if (mount(root, root, NULL, MS_BIND | MS_REC, NULL) < 0) FAIL_ERRNO("bind the root");
    /* Nothing of the host outside the base stays reachable. */
    if (chdir(root) < 0) FAIL_ERRNO("chdir %s", root);
    if (syscall(SYS_pivot_root, ".", ".") < 0) FAIL_ERRNO("pivot_root");
    if (umount2(".", MNT_DETACH) < 0) FAIL_ERRNO("detach the old root");
    if (chdir("/") < 0) FAIL_ERRNO("chdir /");
}

static pid_t start_main(void) {
    pid_t pid = fork();
    if (pid < 0) FAIL_ERRNO("fork");
    if (pid > 0) return pid;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    setsid();
    int nul = open("/dev/null", O_RDONLY);
    if (nul < 0 || dup2(nul, 0) < 0 || dup2(out_pipe[1], 1) < 0 || dup2(out_pipe[1], 2) < 0) _exit(126);
    if (nul > 2) close(nul);
    if (out_pipe[1] > 2) close(out_pipe[1]);
    if (chdir("/workspace") < 0) _exit(126);
    clearenv();
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    setenv("HOME", "/root", 1);
    setenv("HOSTNAME", ident, 1);
    setenv("WSGATE_WORKSPACE_ID", ident, 1);
    for (size_t i = 0; i < envlen;) {
        char *kv = envbuf + i;
        size_t n = strnlen(kv, envlen - i);
        if (strchr(kv, '=')) putenv(kv);
        i += n + 1;
    }
    execvp(cmd[0], cmd);
    dprintf(2, "wsgate: cannot run %s: %s\n", cmd[0], strerror(errno));
    _exit(127);
}

static int init_main(void) {
    prctl(PR_SET_NAME, "wsgate-init");
    if (id_count > 0) {
        if (setgroups(0, NULL) < 0) FAIL_ERRNO("setgroups");
    }
    if (setresgid(0, 0, 0) < 0) FAIL_ERRNO("setresgid");
    if (setresuid(0, 0, 0) < 0) FAIL_ERRNO("setresuid");
    if (sethostname(ident, strlen(ident)) < 0) FAIL_ERRNO("sethostname");
    if (setdomainname("", 0) < 0) FAIL_ERRNO("setdomainname");
    build_root();
    loopback_up();

    sigset_t mask;
    sigemptyset(&mask);
    int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++) sigaddset(&mask, forwarded[i]);
    sigaddset(&mask, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) FAIL_ERRNO("sigprocmask");
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) FAIL_ERRNO("signalfd");

    pid_t main_pid = start_main();
    close(out_pipe[1]);
    /* Setup is over: the shim may report success. */
    if (write(sync_sock[1], "", 1) != 1) _exit(127);
    close(sync_sock[1]);

    struct pollfd fds[2 + MAX_CLIENTS];
    int nclients = 0;
    for (;;) {
        fds[0] = (struct pollfd){.fd = sfd, .events = POLLIN};
        fds[1] = (struct pollfd){.fd = ctl_fd, .events = nclients < MAX_CLIENTS ? POLLIN : 0};
        if (poll(fds, 2 + nclients, -1) < 0) {
            if (errno == EINTR) continue;
            _exit(125);
        }
        if (fds[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo != SIGCHLD) {
                    kill(-main_pid, (int)si.ssi_signo);
                    kill(main_pid, (int)si.ssi_signo);
                    continue;
                }
                int status;
                pid_t pid;
                while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                    if (pid != main_pid) continue;
                    /* PID 1 leaving ends the namespace: the kernel kills the rest. */
                    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
                }
            }
        }
        for (int i = 0; i < nclients; i++) {
            short ev = fds[2 + i].revents;
            if (!ev) continue;
            char req[64];
            ssize_t n = (ev & POLLIN) ? recv(fds[2 + i].fd, req, sizeof req, MSG_DONTWAIT) : 0;
            int ok = n > 0;
            for (ssize_t j = 0; ok && j < n; j++) {
                int s = -1;
                char answer = 'E';
                if (req[j] == 'S') {
                    s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                    answer = s >= 0 ? 'S' : 'E';
                } else if (req[j] == 'P') {
                    answer = 'P';
                }
                ok = send_fd(fds[2 + i].fd, s, answer) == 0;
                if (s >= 0) close(s);
            }
            if (!ok && !(n < 0 && errno == EAGAIN)) {
                close(fds[2 + i].fd);
                fds[2 + i] = fds[2 + nclients - 1];
                nclients--;
                i--;
            }
        }
        if (fds[1].revents & POLLIN) {
            int c = accept4(ctl_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (c >= 0) fds[2 + nclients++] = (struct pollfd){.fd = c, .events = POLLIN};
        }
        for (int i = 0; i < nclients; i++) fds[2 + i].events = POLLIN;
    }
}

static int clone_entry(void *arg) {
    (void)arg;
    close(sync_sock[0]);
    close(out_pipe[0]);
    /* Wait for the maps before acting as root. */
    char go;
    if (read(sync_sock[1], &go, 1) != 1) _exit(127);
    return init_main();
}

/* ---- the shim, on the host ------------------------------------------------ */

static void append_log(int *fd, off_t *size, const char *data, size_t len) {
    char path[PATH_MAX], old[PATH_MAX];
    if ((off_t)len > log_cap) {
        /* A read larger than a whole file: only its end can be kept. */
        data += len - (size_t)log_cap;
        len = (size_t)log_cap;
    }
    if (*size + (off_t)len > log_cap) {
        /* Two files of at most log_cap bytes each: the log stays bounded. */
        snprintf(path, sizeof path, "%s/output.log", dir);
        snprintf(old, sizeof old, "%s/output.log.1", dir);
        rename(path, old);
        close(*fd);
        *fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
        *size = 0;
    }
    if (*fd >= 0 && write(*fd, data, len) > 0) *size += (off_t)len;
}

static int write_maps(pid_t pid) {
    char path[64], map[128];
    snprintf(path, sizeof path, "/proc/%d/uid_map", pid);
    snprintf(map, sizeof map, "0 %ld %ld\n", uid_base, id_count);
    if (write_file(path, map) < 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/gid_map", pid);
    snprintf(map, sizeof map, "0 %ld %ld\n", gid_base, id_count);
    return write_file(path, map);
}

static const char *masks[MAX_MASKS];
static int n_masks;
static int privileged;

/* Mounts the base on DIR/lower, id-mapped like the container: files that host
 * root owns show as the container's root, so package managers can change them
 * (in the writable layer).  Needs the host's root; returns why not, or NULL. */
static const char *idmap_base(void) {
    static char why[300];
    const char *err = NULL;
    int hold[2];
    if (pipe2(hold, O_CLOEXEC) < 0) return "pipe";
    pid_t helper = fork();
    if (helper == 0) {
        /* Holds a user namespace with the container's map while the shim uses it. */
        char byte;
        close(hold[1]);
        if (unshare(CLONE_NEWUSER) < 0) _exit(1);
        if (read(hold[0], &byte, 1) < 0) _exit(1);
        _exit(0);
    }
    close(hold[0]);
    char path[PATH_MAX];
    int userns = -1, tree = -1;
    snprintf(path, sizeof path, "/proc/%d/ns/user", helper);
    for (int i = 0; helper > 0 && i < 20000; i++) {
        struct stat a, b;
        if (stat(path, &a) == 0 && stat("/proc/self/ns/user", &b) == 0 && a.st_ino != b.st_ino) break;
        usleep(50);
    }
    if (helper < 0) err = "fork";
    else if (write_maps(helper) < 0) err = "write the id map";
    else if ((userns = open(path, O_RDONLY | O_CLOEXEC)) < 0) err = "open the user namespace";
    else if ((tree = (int)syscall(SYS_open_tree, AT_FDCWD, base, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)) < 0)
        err = "open_tree";
    else {
        struct mount_attr_v0 attr = {.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY, .userns_fd = (uint64_t)userns};
        snprintf(path, sizeof path, "%s/lower", dir);
        if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) err = "mount_setattr";
        else if (syscall(SYS_move_mount, tree, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) < 0) err = "move_mount";
    }
    if (err) snprintf(why, sizeof why, "%s: %s", err, strerror(errno));
    if (tree >= 0) close(tree);
    if (userns >= 0) close(userns);
    close(hold[1]);
    if (helper > 0) waitpid(helper, NULL, 0);
    return err ? why : NULL;
}

/* One overlay per top-level directory of the base, on a tmpfs root: for a base
 * whose own mount cannot be an overlay layer here (the host's / seen from an
 * unprivileged user namespace still has the host's mounts locked beneath it). */
static const char *overlay_per_dir(const char *root) {
    static char why[PATH_MAX + 64];
    char path[PATH_MAX], opts[3 * PATH_MAX + 64], target[PATH_MAX];
    if (mount("tmpfs", root, "tmpfs", MS_NOSUID, "mode=755") < 0) return "mount tmpfs root";
    DIR *d = opendir(base);
    if (!d) return "open the base";
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", !strcmp(base, "/") ? "" : base, e->d_name);
        snprintf(target, sizeof target, "%s/%s", root, e->d_name);
        struct stat st;
        if (lstat(path, &st) < 0) continue;
        if (S_ISLNK(st.st_mode)) {
            ssize_t n = readlink(path, opts, sizeof opts - 1);
            if (n > 0) { opts[n] = 0; if (symlink(opts, target) < 0) { /* leave it out */ } }
            continue;
        }
        if (!S_ISDIR(st.st_mode)) continue;
        mkdir(target, st.st_mode & 07777);
        char up[PATH_MAX], wk[PATH_MAX];
        snprintf(up, sizeof up, "%s/upper/%s", dir, e->d_name);
        snprintf(wk, sizeof wk, "%s/work/%s", dir, e->d_name);
        mkdir(up, st.st_mode & 07777);
        mkdir(wk, 0700);
        snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s,userxattr", path, up, wk);
        /* A directory with mounts beneath it (/proc, /dev, /run, ...) stays empty. */
        if (mount("overlay", target, "overlay", MS_NOSUID, opts) < 0) errno = 0;
    }
    closedir(d);
    snprintf(path, sizeof path, "%s/upper/workspace", dir);
    snprintf(target, sizeof target, "%s/workspace", root);
    mkdir(target, 0755);
    if (mount(path, target, NULL, MS_BIND, NULL) < 0) {
        snprintf(why, sizeof why, "bind /workspace: %s", strerror(errno));
        return why;
    }
    return NULL;
}

/* Builds DIR/root in a mount namespace of the shim's own, which the container
 * inherits: mounts made here are locked there, so the container cannot lift
 * the masks.  Returns why not, or NULL. */
static const char *prepare_root(void) {
    static char why[PATH_MAX + 300];
    char root[PATH_MAX], path[PATH_MAX], opts[3 * PATH_MAX + 64];
    snprintf(root, sizeof root, "%s/root", dir);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
        snprintf(why, sizeof why, "make / private: %s", strerror(errno));
        return why;
    }
    const char *lowerdir = base;
    /* The host's / is never id-mapped: its root-only files (keys, password
     * hashes) must stay out of the container root's reach. */
    if (privileged && strcmp(base, "/") != 0) {
        const char *err = idmap_base();
        if (err) {
            snprintf(why, sizeof why, "id-mapped view of %s: %s", base, err);
            return why;
        }
        snprintf(path, sizeof path, "%s/lower", dir);
        lowerdir = path;
    }
    snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s/upper,workdir=%s/work%s", lowerdir, dir, dir,
             privileged ? "" : ",userxattr");
    if (mount("overlay", root, "overlay", MS_NOSUID, opts) < 0) {
        const char *err = (!privileged && errno == EINVAL) ? overlay_per_dir(root) : strerror(errno);
        if (err) {
            snprintf(why, sizeof why, "mount the overlay of %s on %s: %s", base, root, err);
            return why;
        }
    }
    const char *dirs[] = {"proc", "sys", "dev", "tmp", "workspace"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        snprintf(path, sizeof path, "%s/%s", root, dirs[i]);
        if (mkdir(path, 0755) == 0 && privileged && strcmp(dirs[i], "workspace") == 0) {
            if (chown(path, (uid_t)uid_base, (gid_t)gid_base) < 0) { /* checked by the main command's chdir */ }
        }
    }
    for (int i = 0; i < n_masks; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s%s", root, masks[i]);
        if (lstat(path, &st) < 0) continue;
        int rc = S_ISDIR(st.st_mode)
                     ? mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0,mode=000")
                     : mount("/dev/null", path, NULL, MS_BIND | MS_RDONLY, NULL);
        if (rc < 0) {
            snprintf(why, sizeof why, "hide %s: %s", masks[i], strerror(errno));
            return why;
        }
    }
    return NULL;
}

static void usage(void) {
    fputs("usage: wsgate-init -d DIR -n ID -b BASE [-u UID -g GID -k COUNT] [-c CGROUP_PROCS]... "
          "[-l LOG_BYTES] -- ARGV...\n", stderr);
    exit(2);
}

static void read_env(void) {
    size_t cap = 4096;
    envbuf = malloc(cap);
    if (!envbuf) exit(1);
    for (;;) {
        if (envlen + 1 >= cap) {
            if (cap >= MAX_ENV) break;
            cap *= 2;
            envbuf = realloc(envbuf, cap);
            if (!envbuf) exit(1);
        }
        ssize_t n = read(0, envbuf + envlen, cap - envlen - 1);
        if (n <= 0) break;
        envlen += (size_t)n;
    }
    envbuf[envlen] = 0;
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "d:n:b:u:g:k:c:m:l:")) != -1) {
        switch (opt) {
        case 'd': dir = optarg; break;
        case 'n': ident = optarg; break;
        case 'b': base = optarg; break;
        case 'u': uid_base = strtol(optarg, NULL, 10); break;
        case 'g': gid_base = strtol(optarg, NULL, 10); break;
        case 'k': id_count = strtol(optarg, NULL, 10); break;
        case 'c': if (n_cgroups < MAX_CGROUPS) cgroups[n_cgroups++] = optarg; break;
        case 'm': if (n_masks < MAX_MASKS && optarg[0] == '/') masks[n_masks++] = optarg; break;
        case 'l': log_cap = strtol(optarg, NULL, 10); break;
        default: usage();
        }
    }
    if (!dir || !ident || !base || optind >= argc) usage();
    if (id_count > 0 && (uid_base <= 0 || gid_base <= 0)) usage();
    cmd = argv + optind;
    read_env();

    int report = dup(1);
    FILE *out = fdopen(report, "w");
    if (!out) return 1;
#define REPORT_FAIL(...) do { fprintf(out, "error "); fprintf(out, __VA_ARGS__); \
        fprintf(out, "\n"); fflush(out); return 1; } while (0)

    char path[PATH_MAX];
    /* Relative names from here on: DIR may be longer than a unix socket path allows. */
    if (chdir(dir) < 0) REPORT_FAIL("enter %s: %s", dir, strerror(errno));
    unlink("ctl.sock");
    ctl_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, "ctl.sock");
    mode_t old_umask = umask(0077);
    if (ctl_fd < 0 || bind(ctl_fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ctl_fd, 64) < 0)
        REPORT_FAIL("control socket in %s: %s", dir, strerror(errno));
    umask(old_umask);

    for (int i = 0; i < n_cgroups; i++) {
        char pid[32];
        snprintf(pid, sizeof pid, "%d", getpid());
        if (write_file(cgroups[i], pid) < 0) REPORT_FAIL("join cgroup %s: %s", cgroups[i], strerror(errno));
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sync_sock) < 0 || pipe2(out_pipe, O_CLOEXEC) < 0)
        REPORT_FAIL("socketpair: %s", strerror(errno));

    privileged = id_count > 0;
    if (privileged) {
        if (unshare(CLONE_NEWNS) < 0) REPORT_FAIL("unshare the mount namespace: %s", strerror(errno));
    } else {
        /* Unprivileged: the shim becomes root of a user namespace of its own
         * (mapped to the caller's uid) to build the root filesystem. */
        uid_t uid = getuid();
        gid_t gid = getgid();
        char map[64];
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0) REPORT_FAIL("unshare: %s", strerror(errno));
        write_file("/proc/self/setgroups", "deny");
        snprintf(map, sizeof map, "0 %d 1\n", uid);
        if (write_file("/proc/self/uid_map", map) < 0) REPORT_FAIL("uid_map: %s", strerror(errno));
        snprintf(map, sizeof map, "0 %d 1\n", gid);
        if (write_file("/proc/self/gid_map", map) < 0) REPORT_FAIL("gid_map: %s", strerror(errno));
    }
    const char *why = prepare_root();
    if (why) REPORT_FAIL("%s", why);
    size_t stack_size = 256 * 1024;
    char *stack = malloc(stack_size);
    if (!stack) REPORT_FAIL("out of memory");
    int flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD;
    pid_t child = clone(clone_entry, stack + stack_size, flags, NULL);
    if (child < 0) REPORT_FAIL("clone: %s", strerror(errno));
    close(sync_sock[1]);
    close(out_pipe[1]);

    char map[128];
    if (id_count > 0) {
        if (write_maps(child) < 0) { kill(child, SIGKILL); REPORT_FAIL("id maps: %s", strerror(errno)); }
    } else {
        /* The shim is root of its own namespace, which maps only that root. */
        snprintf(path, sizeof path, "/proc/%d/setgroups", child);
        write_file(path, "deny");
        snprintf(path, sizeof path, "/proc/%d/uid_map", child);
        snprintf(map, sizeof map, "0 0 1\n");
        if (write_file(path, map) < 0) { kill(child, SIGKILL); REPORT_FAIL("uid_map: %s", strerror(errno)); }
        snprintf(path, sizeof path, "/proc/%d/gid_map", child);
        if (write_file(path, map) < 0) { kill(child, SIGKILL); REPORT_FAIL("gid_map: %s", strerror(errno)); }
    }
    if (write(sync_sock[0], "g", 1) != 1) { kill(child, SIGKILL); REPORT_FAIL("the container died at start"); }

    char msg[600];
    ssize_t n = read(sync_sock[0], msg, sizeof msg - 1);
    if (n != 1 || msg[0] != 0) {
        msg[n > 0 ? n : 0] = 0;
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        REPORT_FAIL("%s", n > 0 ? msg : "the container died during setup");
    }
    close(sync_sock[0]);
    close(ctl_fd);
    free(envbuf);

    char pids[64];
    snprintf(pids, sizeof pids, "%d %d\n", getpid(), child);
    if (write_atomic("pid", pids) < 0) { kill(child, SIGKILL); REPORT_FAIL("write pid file: %s", strerror(errno)); }
    fprintf(out, "ok %d\n", child);
    fflush(out);
    fclose(out);

    /* Detach from the launcher: a gateway restart must not take the workspace with it. */
    setsid();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nul >= 0) { dup2(nul, 0); dup2(nul, 1); }

    snprintf(path, sizeof path, "%s/output.log", dir);
    int log = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    struct stat st;
    off_t size = (log >= 0 && fstat(log, &st) == 0) ? st.st_size : 0;
    char buf[65536];
    for (;;) {
        ssize_t r = read(out_pipe[0], buf, sizeof buf);
        if (r > 0) append_log(&log, &size, buf, (size_t)r);
        else if (r == 0 || errno != EINTR) break;
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    char line[32];
    snprintf(line, sizeof line, "%d\n", code);
    write_atomic("exit", line);
    return 0;
}

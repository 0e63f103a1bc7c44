/*
 * LD_PRELOAD shim that pins wildcard binds to one address.
 *
 * TFF's `worker_binary` has no flag for its listening address: its gRPC
 * server binds `[::]:PORT` (an AF_INET6 socket with IPV6_V6ONLY off), i.e.
 * every IPv4 and IPv6 interface. The binary is dynamically linked and takes
 * `bind` from glibc, so preloading this library puts our `bind` in front.
 *
 * When TFF_PIPELINE_BIND_ADDRESS is set to an IPv4 or IPv6 literal (IPv6
 * optionally in brackets and with a `%scope`), every bind of an AF_INET or
 * AF_INET6 socket to a wildcard address (0.0.0.0, ::, ::ffff:0.0.0.0) is
 * rewritten to that address, keeping the port:
 *
 *   socket   target    bound to
 *   AF_INET  IPv4      the IPv4 target
 *   AF_INET  IPv6      refused (EAFNOSUPPORT); an IPv4-mapped target counts
 *                      as IPv4
 *   AF_INET6 IPv6      the IPv6 target
 *   AF_INET6 IPv4      ::ffff:<target>, the IPv4-mapped form; the socket
 *                      then accepts IPv4 connections to exactly <target>.
 *                      A v6 socket cannot bind a plain IPv4 sockaddr, and
 *                      the mapped form needs IPV6_V6ONLY off, so it is
 *                      turned off if it was on (gRPC already turns it off).
 *
 * Binding `::1` instead of `::ffff:127.0.0.1` would also be loopback-only,
 * but then IPv4 clients (`127.0.0.1:PORT`) could not connect; the mapped form
 * listens on exactly the address the caller asked for.
 *
 * `listen` on a socket that was never bound would make the kernel bind it to
 * the wildcard address; such a socket is first bound to the target (port 0).
 *
 * Non-wildcard binds, other address families (AF_UNIX, netlink, ...) and all
 * binds while the variable is unset or empty pass through unchanged. If the
 * variable is set but the target cannot be applied (not an address literal,
 * wrong family, the kernel refuses it), the bind fails with an errno and a
 * line on stderr: it never falls back to listening everywhere. Each rewrite is
 * reported on stderr too, so the worker's log says where it really listens
 * (its own log line still says `[::]:PORT`).
 *
 * Build: cc -shared -fPIC -O2 -o tff_pipeline_bind_shim.so bind_shim.c -ldl
 * (done by tff_pipeline/runtime/bind_shim.py).
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define ENV_NAME "TFF_PIPELINE_BIND_ADDRESS"

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*listen_fn)(int, int);

/* The parsed target address. */
struct target {
  int family; /* AF_INET or AF_INET6 */
  struct in_addr v4;
  struct in6_addr v6;
  uint32_t scope_id;
};

static void shim_log(const char *fmt, ...) {
  char line[512];
  int n = snprintf(line, sizeof(line), "tff_pipeline bind shim: ");
  va_list args;
  va_start(args, fmt);
  n += vsnprintf(line + n, sizeof(line) - n, fmt, args);
  va_end(args);
  if (n >= (int)sizeof(line) - 1) n = sizeof(line) - 2;
  line[n++] = '\n';
  /* A single write(2) so lines from threads do not interleave. */
  ssize_t ignored = write(STDERR_FILENO, line, n);
  (void)ignored;
}

static bind_fn real_bind(void) {
  static bind_fn fn;
  if (fn == NULL) fn = (bind_fn)dlsym(RTLD_NEXT, "bind");
  return fn;
}

static listen_fn real_listen(void) {
  static listen_fn fn;
  if (fn == NULL) fn = (listen_fn)dlsym(RTLD_NEXT, "listen");
  return fn;
}

/* Returns 1 if set and parsed, 0 if unset or empty, -1 if malformed. */
static int read_target(struct target *t, const char **raw) {
  const char *value = getenv(ENV_NAME);
  *raw = value;
  if (value == NULL || value[0] == '\0') return 0;
  memset(t, 0, sizeof(*t));
  if (inet_pton(AF_INET, value, &t->v4) == 1) {
    t->family = AF_INET;
    return 1;
  }
  char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 4];
  size_t len = strlen(value);
  if (len >= sizeof(buf)) return -1;
  memcpy(buf, value, len + 1);
  char *host = buf;
  if (host[0] == '[') {
    if (len < 2 || host[len - 1] != ']') return -1;
    host[len - 1] = '\0';
    host++;
  }
  char *scope = strchr(host, '%');
  if (scope != NULL) *scope++ = '\0';
  if (inet_pton(AF_INET6, host, &t->v6) != 1) return -1;
  if (scope != NULL) {
    char *end;
    unsigned long index = strtoul(scope, &end, 10);
    if (*scope != '\0' && *end == '\0') {
      t->scope_id = (uint32_t)index;
    } else if ((t->scope_id = if_nametoindex(scope)) == 0) {
      return -1;
    }
  }
  if (IN6_IS_ADDR_V4MAPPED(&t->v6)) {
    t->family = AF_INET;
    memcpy(&t->v4, &t->v6.s6_addr[12], 4);
  } else {
    t->family = AF_INET6;
  }
  return 1;
}

static int is_wildcard(const struct sockaddr *addr, socklen_t len) {
  if (addr == NULL) return 0;
  if (addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    return in->sin_addr.s_addr == htonl(INADDR_ANY);
  }
  /* Linux accepts the 24-byte RFC 2133 sockaddr_in6 (no sin6_scope_id). */
  if (addr->sa_family == AF_INET6 &&
      len >= offsetof(struct sockaddr_in6, sin6_scope_id)) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)addr)->sin6_addr;
    if (IN6_IS_ADDR_UNSPECIFIED(a)) return 1;
    if (IN6_IS_ADDR_V4MAPPED(a)) {
      static const uint8_t zero[4];
      return memcmp(&a->s6_addr[12], zero, 4) == 0;
    }
  }
  return 0;
}

static int rewrite_and_bind(bind_fn next, int fd, const struct sockaddr *addr,
                            socklen_t len, const struct target *t,
                            const char *raw) {
  char shown[INET6_ADDRSTRLEN];
  int result;
  if (addr->sa_family == AF_INET) {
    uint16_t port = ((const struct sockaddr_in *)addr)->sin_port;
    if (t->family != AF_INET) {
      shim_log("refusing to bind an IPv4 socket to 0.0.0.0:%u: %s=%s is an "
               "IPv6 address", ntohs(port), ENV_NAME, raw);
      errno = EAFNOSUPPORT;
      return -1;
    }
    struct sockaddr_in in = *(const struct sockaddr_in *)addr;
    in.sin_addr = t->v4;
    inet_ntop(AF_INET, &in.sin_addr, shown, sizeof(shown));
    result = next(fd, (const struct sockaddr *)&in, sizeof(in));
    if (result == 0) {
      shim_log("bind 0.0.0.0:%u rewritten to %s:%u", ntohs(port), shown,
               ntohs(port));
      return 0;
    }
  } else {
    struct sockaddr_in6 in6;
    memset(&in6, 0, sizeof(in6));
    memcpy(&in6, addr, len < sizeof(in6) ? len : sizeof(in6));
    uint16_t port = in6.sin6_port;
    if (t->family == AF_INET) {
      memset(&in6.sin6_addr, 0, sizeof(in6.sin6_addr));
      in6.sin6_addr.s6_addr[10] = 0xff;
      in6.sin6_addr.s6_addr[11] = 0xff;
      memcpy(&in6.sin6_addr.s6_addr[12], &t->v4, 4);
      in6.sin6_scope_id = 0;
      int v6only = 0;
      socklen_t optlen = sizeof(v6only);
      if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen) == 0 &&
          v6only) {
        int off = 0;
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)) != 0) {
          int saved = errno;
          shim_log("cannot turn IPV6_V6ONLY off to bind [::]:%u as %s: %s",
                   ntohs(port), raw, strerror(saved));
          errno = saved;
          return -1;
        }
      }
    } else {
      in6.sin6_addr = t->v6;
      in6.sin6_scope_id = t->scope_id;
    }
    inet_ntop(AF_INET6, &in6.sin6_addr, shown, sizeof(shown));
    result = next(fd, (const struct sockaddr *)&in6, sizeof(in6));
    if (result == 0) {
      shim_log("bind [::]:%u rewritten to [%s]:%u", ntohs(port), shown,
               ntohs(port));
      return 0;
    }
  }
  int saved = errno;
  shim_log("bind to %s (from %s=%s) failed: %s; not falling back to the "
           "wildcard address", shown, ENV_NAME, raw, strerror(saved));
  errno = saved;
  return result;
}

static int shim_bind(int fd, const struct sockaddr *addr, socklen_t len) {
  bind_fn next = real_bind();
  if (next == NULL) {
    shim_log("dlsym(RTLD_NEXT, \"bind\") failed: %s", dlerror());
    errno = ENOSYS;
    return -1;
  }
  if (!is_wildcard(addr, len)) return next(fd, addr, len);
  struct target t;
  const char *raw;
  int status = read_target(&t, &raw);
  if (status == 0) return next(fd, addr, len);
  if (status < 0) {
    shim_log("%s=%s is not an IPv4 or IPv6 address; refusing a wildcard "
             "bind", ENV_NAME, raw);
    errno = EINVAL;
    return -1;
  }
  return rewrite_and_bind(next, fd, addr, len, &t, raw);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  return shim_bind(fd, addr, len);
}

int listen(int fd, int backlog) {
  listen_fn next = real_listen();
  if (next == NULL) {
    shim_log("dlsym(RTLD_NEXT, \"listen\") failed: %s", dlerror());
    errno = ENOSYS;
    return -1;
  }
  const char *value = getenv(ENV_NAME);
  if (value != NULL && value[0] != '\0') {
    /* An unbound TCP socket has port 0; listen() would autobind it to the
       wildcard address, so bind it ourselves (through the rewrite). */
    struct sockaddr_storage ss;
    socklen_t ss_len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &ss_len) == 0 &&
        (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) &&
        is_wildcard((struct sockaddr *)&ss, ss_len)) {
      uint16_t port = ss.ss_family == AF_INET
                          ? ((struct sockaddr_in *)&ss)->sin_port
                          : ((struct sockaddr_in6 *)&ss)->sin6_port;
      if (port == 0 && shim_bind(fd, (struct sockaddr *)&ss, ss_len) != 0) {
        return -1;
      }
    }
  }
  return next(fd, backlog);
}

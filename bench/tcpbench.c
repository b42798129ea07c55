/*
 * Connect + first byte timer and its server, for bench/run.ts (compiled with cc into the lab directory).
 *
 *   tcpbench hello <port>                          accept on every address, write one byte, close; exits at stdin EOF
 *   tcpbench connect <ip> <port> <n> <max-seconds> n sequential connects, each timed until the first byte arrives;
 *                                                  prints {"n":…,"ok":…,"errors":…,"p50us":…,"p99us":…,"meanus":…}
 *   tcpbench echo <port>                           echo server (a thread per connection); exits at stdin EOF
 *   tcpbench rr <ip> <port> <n> <gap-us> <bytes> <max-seconds>
 *                                                  one connection, n exchanges gap-us apart: send bytes, read them
 *                                                  back (checked), each timed; prints the connect timer's JSON
 *   tcpbench sink <port>                           throughput server (a thread per connection); exits at stdin EOF
 *   tcpbench tput <ip> <port> <up|down> <flows> <seconds>
 *                                                  flows parallel connections moving data one way for seconds; the
 *                                                  time runs from connect until the far end confirmed every byte, so
 *                                                  buffers in a proxy cannot inflate it; prints
 *                                                  {"flows":…,"bytes":…,"seconds":…,"gbits":…,"exact":true|false}
 *
 * Throughput protocol: the client sends 'U' (then data until it half-closes; the server answers its 8-byte count) or
 * 'D' + 4-byte milliseconds (the server sends data that long, half-closes; the client answers its 8-byte count and
 * the server prints "DOWN <sent> <received>" on stdout, which the runner checks).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int hello(int port) {
  int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1024)) {
    perror("bind/listen");
    return 1;
  }
  printf("READY %d\n", port);
  fflush(stdout);
  struct pollfd p[2] = {{.fd = l, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
  for (;;) {
    if (poll(p, 2, -1) < 0 && errno != EINTR) return 1;
    if (p[1].revents) {
      char b[64];
      if (read(0, b, sizeof b) <= 0) return 0; /* the runner went away */
    }
    if (p[0].revents & POLLIN) {
      int c = accept(l, NULL, NULL);
      if (c < 0) continue;
      (void)!write(c, "h", 1);
      close(c);
    }
  }
}

static void print_times(int n, int ok, int errors, double *t, double sum) {
  qsort(t, ok, sizeof *t, cmp);
  int i50 = ok ? (ok * 50 + 99) / 100 - 1 : 0, i99 = ok ? (ok * 99 + 99) / 100 - 1 : 0;
  printf("{\"n\":%d,\"ok\":%d,\"errors\":%d,\"p50us\":%.1f,\"p99us\":%.1f,\"meanus\":%.1f}\n", n, ok, errors,
         ok ? t[i50] : -1, ok ? t[i99] : -1, ok ? sum / ok : -1);
}

static int timer(const char *ip, int port, int n, double max_s) {
  double *t = calloc(n, sizeof *t), start = now_us(), sum = 0;
  int ok = 0, errors = 0;
  struct timeval tv = {.tv_sec = 2};
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) return 2;
  for (int i = 0; i < n && now_us() - start < max_s * 1e6; i++) {
    double t0 = now_us();
    int s = socket(AF_INET, SOCK_STREAM, 0);
    char b;
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0 && read(s, &b, 1) == 1) {
      t[ok++] = now_us() - t0;
      sum += now_us() - t0;
    } else {
      errors++;
    }
    close(s);
  }
  print_times(n, ok, errors, t, sum);
  return 0;
}

static int read_full(int s, void *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(s, (char *)buf + got, n - got);
    if (r <= 0) return -1;
    got += r;
  }
  return 0;
}

static int write_full(int s, const void *buf, size_t n) {
  size_t off = 0;
  while (off < n) {
    ssize_t r = write(s, (const char *)buf + off, n - off);
    if (r <= 0) return -1;
    off += r;
  }
  return 0;
}

#define BUF (256 * 1024)

static void *sink_conn(void *arg) {
  int c = (int)(intptr_t)arg;
  char *buf = malloc(BUF), mode;
  memset(buf, 'x', BUF);
  if (read_full(c, &mode, 1) == 0 && mode == 'U') {
    uint64_t n = 0;
    ssize_t r;
    while ((r = read(c, buf, BUF)) > 0) n += r;
    (void)!write_full(c, &n, 8);
  } else if (mode == 'D') {
    uint32_t ms;
    uint64_t sent = 0, theirs = 0;
    if (read_full(c, &ms, 4) == 0) {
      double end = now_us() + ms * 1e3;
      while (now_us() < end) {
        ssize_t r = write(c, buf, BUF);
        if (r <= 0) break;
        sent += r;
      }
      shutdown(c, SHUT_WR);
      if (read_full(c, &theirs, 8) != 0) theirs = UINT64_MAX;
      printf("DOWN %llu %llu\n", (unsigned long long)sent, (unsigned long long)theirs);
      fflush(stdout);
    }
  }
  free(buf);
  close(c);
  return NULL;
}

static int listen_any(int port) {
  int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1024)) {
    perror("bind/listen");
    return -1;
  }
  printf("READY %d\n", port);
  fflush(stdout);
  return l;
}

/* Accepts on every address, serving each connection in a thread of its own; returns at stdin EOF. */
static int serve_threads(int port, void *(*serve)(void *)) {
  int l = listen_any(port);
  if (l < 0) return 1;
  struct pollfd p[2] = {{.fd = l, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
  for (;;) {
    if (poll(p, 2, -1) < 0 && errno != EINTR) return 1;
    if (p[1].revents) {
      char b[64];
      if (read(0, b, sizeof b) <= 0) return 0; /* the runner went away */
    }
    if (p[0].revents & POLLIN) {
      int c = accept(l, NULL, NULL);
      if (c < 0) continue;
      pthread_t t;
      if (pthread_create(&t, NULL, serve, (void *)(intptr_t)c) == 0) pthread_detach(t);
      else close(c);
    }
  }
}

static void *echo_conn(void *arg) {
  int c = (int)(intptr_t)arg, one = 1;
  char b[4096];
  ssize_t r;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  while ((r = read(c, b, sizeof b)) > 0) {
    if (write_full(c, b, r)) break;
  }
  close(c);
  return NULL;
}

/* One connection, n exchanges gap_us apart: bytes out, the same bytes back, each timed from write to last byte. */
static int rr(const char *ip, int port, int n, int gap_us, int bytes, double max_s) {
  double *t = calloc(n, sizeof *t), start = now_us(), sum = 0;
  int ok = 0, errors = 0, one = 1;
  struct timeval tv = {.tv_sec = 2};
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (n < 1 || bytes < 1 || inet_pton(AF_INET, ip, &a.sin_addr) != 1) return 2;
  char *out = malloc(bytes), *in = malloc(bytes);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(s, (struct sockaddr *)&a, sizeof a)) {
    perror("connect");
    return 1;
  }
  for (int i = 0; i < n && now_us() - start < max_s * 1e6; i++) {
    struct timespec gap = {.tv_sec = gap_us / 1000000, .tv_nsec = (gap_us % 1000000) * 1000L};
    nanosleep(&gap, NULL);
    for (int k = 0; k < bytes; k++) out[k] = (char)(i + k);
    double t0 = now_us();
    if (write_full(s, out, bytes) || read_full(s, in, bytes)) {
      errors++;
      break; /* the stream is out of step: stop */
    }
    double dt = now_us() - t0;
    if (memcmp(out, in, bytes)) {
      errors++;
      continue;
    }
    t[ok++] = dt;
    sum += dt;
  }
  close(s);
  print_times(n, ok, errors, t, sum);
  return 0;
}

struct flow {
  struct sockaddr_in to;
  int up;
  double seconds;
  uint64_t bytes;
  double elapsed_us;
  int exact;
};

static void *flow_run(void *arg) {
  struct flow *f = arg;
  struct timeval tv = {.tv_sec = 15};
  char *buf = malloc(BUF);
  memset(buf, 'y', BUF);
  double t0 = now_us();
  int s = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(s, (struct sockaddr *)&f->to, sizeof f->to) == 0) {
    if (f->up) {
      uint64_t sent = 0, theirs = 0;
      double end = t0 + f->seconds * 1e6;
      if (write_full(s, "U", 1) == 0) {
        while (now_us() < end) {
          ssize_t r = write(s, buf, BUF);
          if (r <= 0) break;
          sent += r;
        }
        shutdown(s, SHUT_WR);
        if (read_full(s, &theirs, 8) == 0) {
          f->bytes = theirs;
          f->exact = theirs == sent;
        }
      }
    } else {
      char req[5] = {'D'};
      uint32_t ms = (uint32_t)(f->seconds * 1000);
      memcpy(req + 1, &ms, 4);
      if (write_full(s, req, 5) == 0) {
        uint64_t got = 0;
        ssize_t r;
        while ((r = read(s, buf, BUF)) > 0) got += r;
        if (r == 0 && write_full(s, &got, 8) == 0) {
          f->bytes = got;
          f->exact = 1; /* confirmed by the server's DOWN line */
        }
      }
    }
  }
  f->elapsed_us = now_us() - t0;
  close(s);
  free(buf);
  return NULL;
}

static int tput(const char *ip, int port, int up, int flows, double seconds) {
  struct flow f[64];
  pthread_t t[64];
  if (flows < 1 || flows > 64) return 2;
  for (int i = 0; i < flows; i++) {
    memset(&f[i], 0, sizeof f[i]);
    f[i].to.sin_family = AF_INET;
    f[i].to.sin_port = htons(port);
    if (inet_pton(AF_INET, ip, &f[i].to.sin_addr) != 1) return 2;
    f[i].up = up;
    f[i].seconds = seconds;
    pthread_create(&t[i], NULL, flow_run, &f[i]);
  }
  uint64_t bytes = 0;
  double longest = 0;
  int exact = 1;
  for (int i = 0; i < flows; i++) {
    pthread_join(t[i], NULL);
    bytes += f[i].bytes;
    if (f[i].elapsed_us > longest) longest = f[i].elapsed_us;
    exact &= f[i].exact && f[i].bytes > 0;
  }
  printf("{\"flows\":%d,\"bytes\":%llu,\"seconds\":%.4f,\"gbits\":%.4f,\"exact\":%s}\n", flows,
         (unsigned long long)bytes, longest / 1e6, longest > 0 ? bytes * 8 / longest / 1e3 : 0, exact ? "true" : "false");
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc == 3 && !strcmp(argv[1], "sink")) return serve_threads(atoi(argv[2]), sink_conn);
  if (argc == 3 && !strcmp(argv[1], "echo")) return serve_threads(atoi(argv[2]), echo_conn);
  if (argc == 8 && !strcmp(argv[1], "rr")) {
    return rr(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), atof(argv[7]));
  }
  if (argc == 7 && !strcmp(argv[1], "tput")) {
    return tput(argv[2], atoi(argv[3]), !strcmp(argv[4], "up"), atoi(argv[5]), atof(argv[6]));
  }
  if (argc == 3 && !strcmp(argv[1], "hello")) return hello(atoi(argv[2]));
  if (argc == 6 && !strcmp(argv[1], "connect")) return timer(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
  fprintf(stderr, "usage: tcpbench hello <port> | connect <ip> <port> <n> <max-s> | echo <port> |"
                  " rr <ip> <port> <n> <gap-us> <bytes> <max-s> | sink <port> | tput <ip> <port> <up|down> <flows> <seconds>\n");
  return 2;
}

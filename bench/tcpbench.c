/*
 * Connect + first byte timer and its server, for bench/run.ts (compiled with cc into the lab directory).
 *
 *   tcpbench hello <port>                          accept on every address, write one byte, close; exits at stdin EOF
 *   tcpbench connect <ip> <port> <n> <max-seconds> n sequential connects, each timed until the first byte arrives;
 *                                                  prints {"n":…,"ok":…,"errors":…,"p50us":…,"p99us":…,"meanus":…}
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
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
  qsort(t, ok, sizeof *t, cmp);
  int i50 = ok ? (ok * 50 + 99) / 100 - 1 : 0, i99 = ok ? (ok * 99 + 99) / 100 - 1 : 0;
  printf("{\"n\":%d,\"ok\":%d,\"errors\":%d,\"p50us\":%.1f,\"p99us\":%.1f,\"meanus\":%.1f}\n", n, ok, errors,
         ok ? t[i50] : -1, ok ? t[i99] : -1, ok ? sum / ok : -1);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "hello")) return hello(atoi(argv[2]));
  if (argc == 6 && !strcmp(argv[1], "connect")) return timer(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
  fprintf(stderr, "usage: tcpbench hello <port> | tcpbench connect <ip> <port> <n> <max-seconds>\n");
  return 2;
}

// local-overlay's fast path, compiled into fuse-native's addon (scripts/build-native.sh copies
// this file next to fuse-native.c, whose patched version includes it; native-notes/README.md
// explains why and how).
//
// fuse-native hands every request from a libfuse thread to the one JS thread and waits: about
// 30 µs of handoff per request, where the work itself (an lstat, a pread) takes 2. This file
// answers the requests whose answer needs no JS-side decision, on the libfuse thread itself:
//
// - Paths inside a store object whose layer the JS side has already decided. The JS side
//   pushes its top-level index here (lo_set/lo_delete/lo_reset): every upper entry (object or
//   whiteout), and each lower object once a lookup of it has been answered (so lazy mode's
//   closure copy has run). Below the top level a merged path is plain passthrough to its
//   layer, so getattr, readlink, open, read, readdir and the like are a syscall each, and in
//   an upper object so are create, write, mkdir, unlink, rename, chmod, utimens...
// - Lookups of absent top-level names: not in the upper index and not in the lower dir (an
//   lstat). A name the lower dir has but the index does not know yet goes to JS.
//
// Everything else goes to the JS handler (it "passes"): the store root itself, every change of a
// top-level name (the JS index and the metadata module must see it), every change refused on
// the lower layer (EROFS/EPERM/ENOSPC/EMLINK and their bookkeeping), libfuse's .fuse_hidden*
// names (redirected to the work dir), bookkeeping-like lower names (*.lock, *.chroot, *.check:
// decided by the lower DB), inode numbers that need the JS inode table, and anything while
// tracing is on (lo_enable(0)). An error at the top level also goes to JS, which decides
// what the name means; below it the layer's errno is the answer.
//
// Inode numbers follow layers/inodes.ts: ino * 2 + layer for an inode of the layer's own device
// below 2^30, else the JS table (so: passes). File handles opened here carry LO_FH_FAST; JS
// handles are small fds and never have it.

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/types.h>

#define LO_UPPER 0
#define LO_LOWER 1
#define LO_WHITEOUT 2
// lo_resolve's answers besides a layer.
#define LO_R_ABSENT 3
#define LO_R_PASS 4

#define LO_FH_FAST (1ULL << 40)
#define LO_FH_LOWER (1ULL << 41)
#define LO_FH_FD(fh) ((int) ((fh) & 0xFFFFFFFFu))

#define LO_COMPUTED_INO_LIMIT (1ULL << 30)
#define LO_UNKNOWN_INO 0xffffffffu
#define LO_NAME_MAX 255
// Lower entries are dropped (and re-learnt through JS) beyond this many.
#define LO_MAX_LOWER_ENTRIES (1u << 19)

// Counters, in the order lo_counters() returns them (src/fuse/fast-path.ts names them).
enum {
  LO_C_GETATTR, LO_C_FGETATTR, LO_C_READLINK, LO_C_OPEN, LO_C_CREATE, LO_C_READ, LO_C_WRITE,
  LO_C_RELEASE, LO_C_FSYNC, LO_C_FTRUNCATE, LO_C_READDIR, LO_C_MKDIR, LO_C_UNLINK, LO_C_RMDIR,
  LO_C_SYMLINK, LO_C_RENAME, LO_C_LINK, LO_C_CHMOD, LO_C_CHOWN, LO_C_TRUNCATE, LO_C_UTIMENS,
  LO_C_UPPER, LO_C_LOWER, LO_C_MISS, LO_C_PASSED, LO_C_CACHED_LISTING, LO_C_PASSTHROUGH,
  LO_C_COUNT
};

typedef struct lo_entry {
  struct lo_entry *next;
  uint32_t hash;
  uint8_t kind;
  uint16_t len;
  char name[];
} lo_entry;

typedef struct {
  uint64_t nodeid;
  uint32_t epoch;
} lo_listing;

typedef struct {
  pthread_rwlock_t lock;
  lo_entry **buckets;
  size_t nbuckets;   // a power of two
  size_t count;
  size_t lower_count;

  char dir[2][PATH_MAX];
  size_t dir_len[2];
  dev_t dev[2];

  // Directories whose listing the kernel was allowed to keep, with the epoch they were listed
  // in (see "the channel"); `refresh` (lo_reset) starts a new epoch.
  pthread_mutex_t listings_lock;
  lo_listing *listings; // open addressing on nodeid; nodeid 0 = free
  size_t listings_cap;  // a power of two, or 0 before the first
  size_t listings_count;
  uint32_t epoch;
  // Lower files at least this long are opened with FUSE passthrough; -1: none (the channel).
  int64_t passthrough_min;

  int enabled;
  // Set when the table could not take an entry: it no longer has every upper name, so the
  // fast path (which answers "absent" from it) stays off for good.
  int failed;
  uint64_t counters[LO_C_COUNT];
} lo_fast;

// The JS-backed operations, called when the fast path passes.
static struct fuse_operations lo_js;

static inline void lo_count(lo_fast *f, int c) {
  __atomic_fetch_add(&f->counters[c], 1, __ATOMIC_RELAXED);
}

// ---- the top-level table ---------------------------------------------------------------------

static uint32_t lo_hash(const char *s, size_t n) {
  uint32_t h = 2166136261u; // FNV-1a
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t) s[i]) * 16777619u;
  return h;
}

static lo_entry **lo_slot(lo_fast *f, const char *name, size_t len, uint32_t h) {
  lo_entry **p = &f->buckets[h & (f->nbuckets - 1)];
  while (*p && !((*p)->hash == h && (*p)->len == len && memcmp((*p)->name, name, len) == 0)) p = &(*p)->next;
  return p;
}

// Kind of a top-level name, or -1. Takes the read lock.
static int lo_kind(lo_fast *f, const char *name, size_t len) {
  uint32_t h = lo_hash(name, len);
  pthread_rwlock_rdlock(&f->lock);
  lo_entry *e = *lo_slot(f, name, len, h);
  int kind = e ? e->kind : -1;
  pthread_rwlock_unlock(&f->lock);
  return kind;
}

static void lo_clear_locked(lo_fast *f, int only_lower) {
  for (size_t i = 0; i < f->nbuckets; i++) {
    lo_entry **p = &f->buckets[i];
    while (*p) {
      lo_entry *e = *p;
      if (only_lower && e->kind != LO_LOWER) {
        p = &e->next;
        continue;
      }
      *p = e->next;
      free(e);
      f->count--;
    }
  }
  f->lower_count = 0;
}

static void lo_grow_locked(lo_fast *f) {
  size_t n = f->nbuckets * 2;
  lo_entry **b = calloc(n, sizeof(*b));
  if (b == NULL) return; // stays correct, only slower
  for (size_t i = 0; i < f->nbuckets; i++) {
    lo_entry *e = f->buckets[i];
    while (e) {
      lo_entry *next = e->next;
      e->next = b[e->hash & (n - 1)];
      b[e->hash & (n - 1)] = e;
      e = next;
    }
  }
  free(f->buckets);
  f->buckets = b;
  f->nbuckets = n;
}

// Sets (kind >= 0) or deletes (kind < 0) a name. Returns 0, or -ENOMEM after which the name is
// absent from the table and the fast path is off for good (failed).
static int lo_put(lo_fast *f, const char *name, size_t len, int kind) {
  uint32_t h = lo_hash(name, len);
  int res = 0;
  pthread_rwlock_wrlock(&f->lock);
  lo_entry **p = lo_slot(f, name, len, h);
  if (*p) {
    lo_entry *e = *p;
    if (e->kind == LO_LOWER) f->lower_count--;
    *p = e->next;
    free(e);
    f->count--;
  }
  if (kind >= 0) {
    if (kind == LO_LOWER && f->lower_count >= LO_MAX_LOWER_ENTRIES) lo_clear_locked(f, 1);
    if (f->count >= f->nbuckets) {
      lo_grow_locked(f);
      p = lo_slot(f, name, len, h);
    }
    lo_entry *e = malloc(sizeof(lo_entry) + len);
    if (e == NULL) {
      res = -ENOMEM;
      __atomic_store_n(&f->failed, 1, __ATOMIC_RELEASE);
      __atomic_store_n(&f->enabled, 0, __ATOMIC_RELEASE);
    } else {
      e->hash = h;
      e->kind = (uint8_t) kind;
      e->len = (uint16_t) len;
      memcpy(e->name, name, len);
      e->next = *p;
      *p = e;
      f->count++;
      if (kind == LO_LOWER) f->lower_count++;
    }
  }
  pthread_rwlock_unlock(&f->lock);
  return res;
}

// ---- resolution ------------------------------------------------------------------------------

// Nix's base32 alphabet: 0-9 and a-z without e, o, u, t.
static int lo_is_hash_char(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z' && c != 'e' && c != 'o' && c != 'u' && c != 't');
}

static int lo_is_name_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
    || c == '+' || c == '-' || c == '.' || c == '_' || c == '?' || c == '=';
}

// store/store-path.ts isStoreObjectName.
static int lo_is_store_name(const char *s, size_t n) {
  if (n < 34 || n > 32 + 1 + 211 || s[32] != '-' || s[33] == '.') return 0;
  for (size_t i = 0; i < 32; i++) if (!lo_is_hash_char(s[i])) return 0;
  for (size_t i = 33; i < n; i++) if (!lo_is_name_char(s[i])) return 0;
  return 1;
}

// libfuse's names for unlinked-but-open files: redirected to the work dir by JS.
static int lo_is_hidden(const char *path) {
  const char *base = strrchr(path, '/');
  return base != NULL && strncmp(base + 1, ".fuse_hidden", 12) == 0;
}

// The layer of a merged path (LO_UPPER/LO_LOWER), LO_R_ABSENT, or LO_R_PASS. *top is set
// when the path is a top-level name.
static int lo_resolve(lo_fast *f, const char *path, int *top) {
  if (path == NULL || path[0] != '/') return LO_R_PASS;
  const char *name = path + 1;
  const char *slash = strchr(name, '/');
  size_t len = slash ? (size_t) (slash - name) : strlen(name);
  *top = slash == NULL;
  if (len == 0 || len > LO_NAME_MAX || lo_is_hidden(path)) return LO_R_PASS;

  int kind = lo_kind(f, name, len);
  if (kind == LO_UPPER || kind == LO_LOWER) {
    lo_count(f, kind == LO_UPPER ? LO_C_UPPER : LO_C_LOWER);
    return kind;
  }
  if (kind == LO_WHITEOUT) return *top ? LO_R_ABSENT : LO_R_PASS;
  // Not in the table: decide only "absent", and only for a top-level name.
  if (!*top) return LO_R_PASS;
  if (!lo_is_store_name(name, len)) return LO_R_ABSENT; // not upper (the table has every upper name), not a lower object
  char real[PATH_MAX];
  if (f->dir_len[LO_LOWER] + 1 + len >= sizeof(real)) return LO_R_PASS;
  memcpy(real, f->dir[LO_LOWER], f->dir_len[LO_LOWER]);
  memcpy(real + f->dir_len[LO_LOWER], path, len + 2); // "/NAME\0"
  struct stat st;
  if (lstat(real, &st) == 0) return LO_R_PASS; // a lower object JS has not seen (or bookkeeping)
  return (errno == ENOENT || errno == ENOTDIR) ? LO_R_ABSENT : LO_R_PASS;
}

// The real path of a merged path in a layer; 0, or -1 when it does not fit.
static int lo_real(lo_fast *f, int layer, const char *path, char *real) {
  size_t n = strlen(path);
  if (f->dir_len[layer] + n >= PATH_MAX) return -1;
  memcpy(real, f->dir[layer], f->dir_len[layer]);
  memcpy(real + f->dir_len[layer], path, n + 1);
  return 0;
}

// The merged inode number (layers/inodes.ts); 0 when only the JS table can give it.
static int lo_map_ino(lo_fast *f, int layer, struct stat *st) {
  if (st->st_dev != f->dev[layer] || (uint64_t) st->st_ino >= LO_COMPUTED_INO_LIMIT) return 0;
  st->st_ino = st->st_ino * 2 + layer;
  st->st_dev = 0;
  return 1;
}

static lo_fast *lo_get(void) {
  struct fuse_context *ctx = fuse_get_context();
  fuse_thread_t *ft = ctx ? (fuse_thread_t *) ctx->private_data : NULL;
  if (ft == NULL) return NULL;
  lo_fast *f = __atomic_load_n(&ft->fast, __ATOMIC_ACQUIRE);
  return (f && __atomic_load_n(&f->enabled, __ATOMIC_ACQUIRE)) ? f : NULL;
}

static inline int lo_is_fast_fh(struct fuse_file_info *fi) {
  return fi != NULL && (fi->fh & LO_FH_FAST);
}

// A path's layer and real path when it lies in an upper object (or is one, with allow_top),
// for a change made here; else 0 (pass to JS).
static int lo_upper_path(lo_fast *f, const char *path, int allow_top, char *real) {
  int top = 0;
  if (lo_resolve(f, path, &top) != LO_UPPER || (top && !allow_top)) return 0;
  return lo_real(f, LO_UPPER, path, real) == 0;
}

#define LO_PASS_TO(op, ...) do { if (f) lo_count(f, LO_C_PASSED); return lo_js.op(__VA_ARGS__); } while (0)

// ---- operations ------------------------------------------------------------------------------

static int lo_getattr(const char *path, struct stat *st) {
  lo_fast *f = lo_get();
  if (f == NULL) return lo_js.getattr(path, st);
  if (path != NULL && path[0] == '/' && path[1] == '\0') {
    // The store root: the upper dir's attributes, inode 1 (overlay.ts rootAttr).
    if (stat(f->dir[LO_UPPER], st) < 0) LO_PASS_TO(getattr, path, st);
    st->st_ino = 1;
    st->st_dev = 0;
    lo_count(f, LO_C_GETATTR);
    return 0;
  }
  int top = 0;
  int r = lo_resolve(f, path, &top);
  if (r == LO_R_ABSENT) {
    lo_count(f, LO_C_MISS);
    return -ENOENT;
  }
  char real[PATH_MAX];
  if (r == LO_R_PASS || lo_real(f, r, path, real) < 0) LO_PASS_TO(getattr, path, st);
  if (lstat(real, st) < 0) {
    if (top) LO_PASS_TO(getattr, path, st);
    return -errno;
  }
  if (!lo_map_ino(f, r, st)) LO_PASS_TO(getattr, path, st);
  lo_count(f, LO_C_GETATTR);
  return 0;
}

static int lo_fgetattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.fgetattr(path, st, fi);
  lo_fast *f = lo_get();
  int layer = (fi->fh & LO_FH_LOWER) ? LO_LOWER : LO_UPPER;
  if (fstat(LO_FH_FD(fi->fh), st) < 0) return -errno;
  if (f != NULL && lo_map_ino(f, layer, st)) {
    lo_count(f, LO_C_FGETATTR);
    return 0;
  }
  if (path == NULL) return -ESTALE;
  return lo_js.getattr(path, st);
}

static int lo_readlink(const char *path, char *buf, size_t size) {
  lo_fast *f = lo_get();
  if (f == NULL || size == 0) return lo_js.readlink(path, buf, size);
  int top = 0;
  int r = lo_resolve(f, path, &top);
  if (r == LO_R_ABSENT) return -ENOENT;
  char real[PATH_MAX];
  if (r == LO_R_PASS || lo_real(f, r, path, real) < 0) LO_PASS_TO(readlink, path, buf, size);
  ssize_t n = readlink(real, buf, size - 1);
  if (n < 0) {
    if (top) LO_PASS_TO(readlink, path, buf, size);
    return -errno;
  }
  buf[n] = '\0';
  lo_count(f, LO_C_READLINK);
  return 0;
}

static void lo_set_fh(struct fuse_file_info *fi, int layer, int fd) {
  fi->fh = LO_FH_FAST | (layer == LO_LOWER ? LO_FH_LOWER : 0) | (uint64_t) (uint32_t) fd;
}

static int lo_open(const char *path, struct fuse_file_info *fi) {
  lo_fast *f = lo_get();
  if (f == NULL) return lo_js.open(path, fi);
  int top = 0;
  int r = lo_resolve(f, path, &top);
  if (r == LO_R_ABSENT) return -ENOENT;
  int writes = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & (O_TRUNC | O_APPEND)) != 0;
  char real[PATH_MAX];
  if (r == LO_R_PASS || (r == LO_LOWER && writes) || lo_real(f, r, path, real) < 0) LO_PASS_TO(open, path, fi);
  int fd = open(real, (fi->flags & ~(O_CREAT | O_EXCL)) | O_NOFOLLOW);
  if (fd < 0) {
    if (top) LO_PASS_TO(open, path, fi);
    return -errno;
  }
  lo_set_fh(fi, r, fd);
  lo_count(f, LO_C_OPEN);
  return 0;
}

static int lo_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
  lo_fast *f = lo_get();
  char real[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, path, 0, real)) LO_PASS_TO(create, path, mode, fi);
  int fd = open(real, fi->flags | O_CREAT | O_NOFOLLOW, mode & 07777);
  if (fd < 0) return -errno;
  lo_set_fh(fi, LO_UPPER, fd);
  lo_count(f, LO_C_CREATE);
  return 0;
}

static int lo_read(const char *path, char *buf, size_t len, off_t off, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.read(path, buf, len, off, fi);
  // One pread: store files are regular files, which read short only at their end.
  ssize_t n;
  do n = pread(LO_FH_FD(fi->fh), buf, len, off); while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  lo_fast *f = lo_get();
  if (f) lo_count(f, LO_C_READ);
  return (int) n;
}

static int lo_write(const char *path, const char *buf, size_t len, off_t off, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.write(path, buf, len, off, fi);
  int fd = LO_FH_FD(fi->fh);
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, buf + done, len - done, off + (off_t) done);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done > 0) break;
      return -errno;
    }
    done += (size_t) n;
  }
  lo_fast *f = lo_get();
  if (f) lo_count(f, LO_C_WRITE);
  return (int) done;
}

static int lo_release(const char *path, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.release(path, fi);
  close(LO_FH_FD(fi->fh));
  lo_fast *f = lo_get();
  if (f) lo_count(f, LO_C_RELEASE);
  return 0;
}

static int lo_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.fsync(path, datasync, fi);
  int fd = LO_FH_FD(fi->fh);
  if ((datasync ? fdatasync(fd) : fsync(fd)) < 0) return -errno;
  lo_fast *f = lo_get();
  if (f) lo_count(f, LO_C_FSYNC);
  return 0;
}

static int lo_ftruncate(const char *path, off_t size, struct fuse_file_info *fi) {
  if (!lo_is_fast_fh(fi)) return lo_js.ftruncate(path, size, fi);
  if (fi->fh & LO_FH_LOWER) return -EROFS;
  if (ftruncate(LO_FH_FD(fi->fh), size) < 0) return -errno;
  lo_fast *f = lo_get();
  if (f) lo_count(f, LO_C_FTRUNCATE);
  return 0;
}

static int lo_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off, struct fuse_file_info *fi) {
  lo_fast *f = lo_get();
  if (f == NULL) return lo_js.readdir(path, buf, filler, off, fi);
  int top = 0;
  int r = lo_resolve(f, path, &top);
  if (r == LO_R_ABSENT) return -ENOENT;
  char real[PATH_MAX];
  if (r == LO_R_PASS || lo_real(f, r, path, real) < 0) LO_PASS_TO(readdir, path, buf, filler, off, fi);
  DIR *d = opendir(real);
  if (d == NULL) {
    if (top) LO_PASS_TO(readdir, path, buf, filler, off, fi);
    return -errno;
  }
  // d_ino and d_type from the layer: the same numbers getattr gives (lo_map_ino), so that
  // `find`, `ls` and Nix's optimiser need no stat to learn an entry's type.
  struct dirent *de;
  struct stat st;
  int err = 0;
  for (;;) {
    errno = 0;
    de = readdir(d);
    if (de == NULL) {
      err = errno;
      break;
    }
    int dots = de->d_name[0] == '.' && (de->d_name[1] == '\0' || (de->d_name[1] == '.' && de->d_name[2] == '\0'));
    if (dots) {
      if (filler(buf, de->d_name, NULL, 0)) break;
      continue;
    }
    memset(&st, 0, sizeof(st));
    st.st_ino = (uint64_t) de->d_ino < LO_COMPUTED_INO_LIMIT ? de->d_ino * 2 + r : LO_UNKNOWN_INO;
    st.st_mode = de->d_type == DT_UNKNOWN ? 0 : DTTOIF(de->d_type);
    if (filler(buf, de->d_name, &st, 0)) break;
  }
  closedir(d);
  if (err != 0) return -err;
  lo_count(f, LO_C_READDIR);
  return 0;
}

// The answer to a change made here: -errno, or 0 (counted).
static int lo_done(lo_fast *f, int rc, int counter) {
  if (rc < 0) return -errno;
  lo_count(f, counter);
  return 0;
}

static int lo_mkdir(const char *path, mode_t mode) {
  lo_fast *f = lo_get();
  char real[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, path, 0, real)) LO_PASS_TO(mkdir, path, mode);
  return lo_done(f, mkdir(real, mode & 07777), LO_C_MKDIR);
}

static int lo_unlink(const char *path) {
  lo_fast *f = lo_get();
  char real[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, path, 0, real)) LO_PASS_TO(unlink, path);
  return lo_done(f, unlink(real), LO_C_UNLINK);
}

static int lo_rmdir(const char *path) {
  lo_fast *f = lo_get();
  char real[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, path, 0, real)) LO_PASS_TO(rmdir, path);
  return lo_done(f, rmdir(real), LO_C_RMDIR);
}

static int lo_symlink(const char *target, const char *path) {
  lo_fast *f = lo_get();
  char real[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, path, 0, real)) LO_PASS_TO(symlink, target, path);
  return lo_done(f, symlink(target, real), LO_C_SYMLINK);
}

static int lo_rename(const char *src, const char *dst) {
  lo_fast *f = lo_get();
  char from[PATH_MAX], to[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, src, 0, from) || !lo_upper_path(f, dst, 0, to)) LO_PASS_TO(rename, src, dst);
  return lo_done(f, rename(from, to), LO_C_RENAME);
}

static int lo_link(const char *src, const char *dst) {
  lo_fast *f = lo_get();
  char from[PATH_MAX], to[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, src, 0, from) || !lo_upper_path(f, dst, 0, to)) LO_PASS_TO(link, src, dst);
  return lo_done(f, link(from, to), LO_C_LINK);
}

static int lo_chmod(const char *path, mode_t mode) {
  lo_fast *f = lo_get();
  char real[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, path, 1, real)) LO_PASS_TO(chmod, path, mode);
  return lo_done(f, chmod(real, mode & 07777), LO_C_CHMOD);
}

static int lo_chown(const char *path, uid_t uid, gid_t gid) {
  lo_fast *f = lo_get();
  char real[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, path, 1, real)) LO_PASS_TO(chown, path, uid, gid);
  return lo_done(f, lchown(real, uid, gid), LO_C_CHOWN);
}

static int lo_truncate(const char *path, off_t size) {
  lo_fast *f = lo_get();
  char real[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, path, 1, real)) LO_PASS_TO(truncate, path, size);
  return lo_done(f, truncate(real, size), LO_C_TRUNCATE);
}

// Full nanosecond precision, UTIME_NOW and UTIME_OMIT as they come.
static int lo_utimens(const char *path, const struct timespec tv[2]) {
  lo_fast *f = lo_get();
  char real[PATH_MAX];
  if (f == NULL || !lo_upper_path(f, path, 1, real)) LO_PASS_TO(utimens, path, tv);
  return lo_done(f, utimensat(AT_FDCWD, real, tv, AT_SYMLINK_NOFOLLOW), LO_C_UTIMENS);
}

// Puts the fast path in front of each operation JS implements; the JS handler stays the
// fallback. Operations JS does not implement stay unimplemented.
static void lo_wrap_ops(struct fuse_operations *ops) {
  lo_js = *ops;
#define LO_WRAP(name) if (ops->name) ops->name = lo_##name
  LO_WRAP(getattr); LO_WRAP(fgetattr); LO_WRAP(readlink); LO_WRAP(open); LO_WRAP(create);
  LO_WRAP(read); LO_WRAP(write); LO_WRAP(release); LO_WRAP(fsync); LO_WRAP(ftruncate);
  LO_WRAP(readdir); LO_WRAP(mkdir); LO_WRAP(unlink); LO_WRAP(rmdir); LO_WRAP(symlink);
  LO_WRAP(rename); LO_WRAP(link); LO_WRAP(chmod); LO_WRAP(chown); LO_WRAP(truncate);
  LO_WRAP(utimens);
#undef LO_WRAP
}

// ---- the channel: between libfuse and /dev/fuse -------------------------------------------
//
// libfuse 2.9 builds every reply from `struct fuse_file_info`, which cannot ask for the open
// flags the kernel learnt after protocol 7.19. One of them matters here: FOPEN_CACHE_DIR
// (with FOPEN_KEEP_CACHE) on an OPENDIR reply lets the kernel keep the directory's listing in
// its page cache and answer later getdents from it, with no OPENDIR→READDIR→READDIR round
// trips and no GETATTR for the atime the uncached path invalidates. The kernel honours the flag
// whatever minor version was negotiated (fs/fuse/readdir.c checks only the open flags).
//
// So the mount reads and writes /dev/fuse through this channel instead of libfuse's own: the
// same read(2)/writev(2) and error handling as libfuse's kernel channel (fuse_kern_chan.c),
// plus, on a successful OPENDIR reply, the two flags, under these conditions:
//
// - Not for the store root (node 1): its listing grows with the lower store, beside the mount.
// - Only while the fast path is on (tracing must see every READDIR; while it is off, each
//   OPENDIR reply lacks FOPEN_KEEP_CACHE, so the kernel drops the cached listing).
// - Every other directory changes only through this mount: a lower object never changes, an
//   upper one is written only here, and the kernel resets a cached listing when a change made
//   through the mount touches the directory (fuse_dir_changed bumps its version) or its mtime
//   moves. An object put beside the mount needs `refresh`, as before; a refresh starts a new
//   epoch, and a directory's first OPENDIR in an epoch is answered without FOPEN_KEEP_CACHE,
//   which makes the kernel drop the listing it kept (lo_listing_flags).
//
// The reply to a request is sent by the thread that read it (libfuse's high-level API answers
// synchronously), so the request's opcode and node travel in a thread-local.

#define LO_FUSE_OPEN 14
#define LO_FUSE_RELEASE 18
#define LO_FUSE_INIT 26
#define LO_FUSE_OPENDIR 27
#define LO_FUSE_ROOT_ID 1
#define LO_FOPEN_KEEP_CACHE (1u << 1)
#define LO_FOPEN_CACHE_DIR (1u << 3)
#define LO_FOPEN_PASSTHROUGH (1u << 7)
#define LO_FUSE_INIT_EXT (1u << 30)
#define LO_FUSE_PASSTHROUGH2 (1u << 5) // FUSE_PASSTHROUGH (bit 37) in flags2
#define LO_FUSE_DEV_IOC_BACKING_OPEN _IOW(229, 1, lo_backing_map)
#define LO_FUSE_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)
// Highest descriptor a passthrough handle may have (lo_chan.by_fd is indexed by it).
#define LO_MAX_PASSTHROUGH_FD (1 << 20)

typedef struct {
  uint32_t len;
  uint32_t opcode;
  uint64_t unique;
  uint64_t nodeid;
  uint32_t uid, gid, pid, padding;
} lo_in_header;

typedef struct {
  uint32_t len;
  int32_t error;
  uint64_t unique;
} lo_out_header;

typedef struct {
  uint64_t fh;
  uint32_t open_flags;
  int32_t backing_id; // 7.40; libfuse 2.9 sends 0 (padding)
} lo_open_out;

typedef struct {
  uint32_t flags;
  uint32_t open_flags;
} lo_open_in;

typedef struct {
  uint64_t fh;
  uint32_t flags, release_flags;
  uint64_t lock_owner;
} lo_release_in;

typedef struct {
  uint32_t major, minor, max_readahead, flags;
  uint32_t flags2; // only with FUSE_INIT_EXT in flags
} lo_init_in;

// fuse_init_out as of 7.43; libfuse 2.9 fills the first 24 bytes (7.19).
typedef struct {
  uint32_t major, minor, max_readahead, flags;
  uint16_t max_background, congestion_threshold;
  uint32_t max_write, time_gran;
  uint16_t max_pages, map_alignment;
  uint32_t flags2, max_stack_depth;
  uint16_t request_timeout;
  uint16_t unused[11];
} lo_init_out;
#define LO_INIT_OUT_LIBFUSE 24

typedef struct {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
} lo_backing_map;

// One lower file open with passthrough (id >= 0) or, after the kernel refused a backing file,
// in the page cache (id < 0): every open of a file while another is open gets the same mode
// (the kernel fails an open whose mode differs from the inode's with EIO).
typedef struct lo_backing {
  struct lo_backing *next;
  dev_t dev;
  ino_t ino;
  int32_t id;
  uint32_t opens;
} lo_backing;

typedef struct {
  fuse_thread_t *ft;
  // The kernel offered FUSE_PASSTHROUGH (INIT); the connection has it (our INIT reply asked).
  int kernel_passthrough;
  int passthrough;
  pthread_mutex_t lock;
  lo_backing *backings;  // a list: few files are open at once
  lo_backing **by_fd;    // the entry a passthrough handle's descriptor holds
  size_t by_fd_len;
} lo_chan;

typedef struct {
  uint64_t unique;
  uint64_t nodeid;
  uint32_t opcode;
  uint32_t open_flags; // OPEN: the flags of open(2)
} lo_request;

static __thread lo_request lo_current;

static lo_fast *lo_chan_fast(lo_chan *c) {
  return __atomic_load_n(&c->ft->fast, __ATOMIC_ACQUIRE);
}

#define LO_LISTINGS_MIN (1u << 12)
#define LO_LISTINGS_MAX (1u << 20)

// The open flags for directory `nodeid` while the fast path is on: FOPEN_CACHE_DIR always, and
// FOPEN_KEEP_CACHE too if its listing was cached in the current epoch. Without KEEP_CACHE the
// kernel drops what it kept and fills the cache again from this listing. So a `refresh` (a
// new epoch) costs every directory one listing, and a full table just starts a new epoch.
static uint32_t lo_listing_flags(lo_fast *f, uint64_t nodeid) {
  uint32_t flags = LO_FOPEN_CACHE_DIR;
  pthread_mutex_lock(&f->listings_lock);
  if (f->listings_count + 1 > f->listings_cap / 4 * 3) {
    size_t cap = f->listings_cap == 0 ? LO_LISTINGS_MIN : f->listings_cap * 2;
    lo_listing *grown = cap <= LO_LISTINGS_MAX ? calloc(cap, sizeof(lo_listing)) : NULL;
    if (grown != NULL) {
      for (size_t i = 0; i < f->listings_cap; i++) {
        lo_listing e = f->listings[i];
        if (e.nodeid == 0) continue;
        size_t j = (size_t) (e.nodeid * 0x9E3779B97F4A7C15ull) & (cap - 1);
        while (grown[j].nodeid != 0) j = (j + 1) & (cap - 1);
        grown[j] = e;
      }
      free(f->listings);
      f->listings = grown;
      f->listings_cap = cap;
    } else if (f->listings_cap > 0) {
      memset(f->listings, 0, f->listings_cap * sizeof(lo_listing));
      f->listings_count = 0;
      f->epoch++;
    }
  }
  if (f->listings_cap > 0) {
    size_t mask = f->listings_cap - 1;
    size_t j = (size_t) (nodeid * 0x9E3779B97F4A7C15ull) & mask;
    while (f->listings[j].nodeid != 0 && f->listings[j].nodeid != nodeid) j = (j + 1) & mask;
    if (f->listings[j].nodeid == nodeid && f->listings[j].epoch == f->epoch) {
      flags |= LO_FOPEN_KEEP_CACHE;
    } else {
      if (f->listings[j].nodeid == 0) f->listings_count++;
      f->listings[j].nodeid = nodeid;
      f->listings[j].epoch = f->epoch;
    }
  }
  pthread_mutex_unlock(&f->listings_lock);
  return flags;
}

// ---- passthrough -----------------------------------------------------------------------------

// The backing entry for lower file `st` (open as `fd`), with one more open counted, or NULL.
static lo_backing *lo_backing_get(lo_chan *c, int devfd, int fd, const struct stat *st) {
  if (fd < 0 || fd >= LO_MAX_PASSTHROUGH_FD) return NULL;
  pthread_mutex_lock(&c->lock);
  if ((size_t) fd >= c->by_fd_len) {
    size_t len = c->by_fd_len == 0 ? 1024 : c->by_fd_len;
    while (len <= (size_t) fd) len *= 2;
    lo_backing **grown = realloc(c->by_fd, len * sizeof(lo_backing *));
    if (grown == NULL) {
      pthread_mutex_unlock(&c->lock);
      return NULL;
    }
    memset(grown + c->by_fd_len, 0, (len - c->by_fd_len) * sizeof(lo_backing *));
    c->by_fd = grown;
    c->by_fd_len = len;
  }
  lo_backing *b = c->backings;
  while (b != NULL && (b->dev != st->st_dev || b->ino != st->st_ino)) b = b->next;
  if (b == NULL) {
    b = calloc(1, sizeof(lo_backing));
    if (b == NULL) {
      pthread_mutex_unlock(&c->lock);
      return NULL;
    }
    b->dev = st->st_dev;
    b->ino = st->st_ino;
    lo_backing_map map = { .fd = fd, .flags = 0, .padding = 0 };
    b->id = ioctl(devfd, LO_FUSE_DEV_IOC_BACKING_OPEN, &map); // -1 if refused: page cache
    b->next = c->backings;
    c->backings = b;
  }
  b->opens++;
  c->by_fd[fd] = b;
  pthread_mutex_unlock(&c->lock);
  return b;
}

// The handle with descriptor `fd` is released: one open less, and the backing file goes with
// the last one.
static void lo_backing_put(lo_chan *c, int devfd, int fd) {
  if (fd < 0) return;
  pthread_mutex_lock(&c->lock);
  lo_backing *b = (size_t) fd < c->by_fd_len ? c->by_fd[fd] : NULL;
  if (b != NULL) {
    c->by_fd[fd] = NULL;
    if (--b->opens == 0) {
      lo_backing **p = &c->backings;
      while (*p != b) p = &(*p)->next;
      *p = b->next;
      if (b->id >= 0) {
        uint32_t id = (uint32_t) b->id;
        ioctl(devfd, LO_FUSE_DEV_IOC_BACKING_CLOSE, &id);
      }
      free(b);
    }
  }
  pthread_mutex_unlock(&c->lock);
}

// Whether handle `fh` (file `st`) is a lower file. Handles opened here say so; a JS handle is
// a plain descriptor: its device tells, unless both layers share one, then its path does.
static int lo_fd_is_lower(lo_fast *f, uint64_t fh, const struct stat *st) {
  if (fh & LO_FH_FAST) return (fh & LO_FH_LOWER) != 0;
  if (st->st_dev != f->dev[LO_LOWER]) return 0;
  if (f->dev[LO_LOWER] != f->dev[LO_UPPER]) return 1;
  char link[64], real[PATH_MAX];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", LO_FH_FD(fh));
  ssize_t n = readlink(link, real, sizeof(real) - 1);
  if (n <= 0) return 0;
  real[n] = '\0';
  size_t len = f->dir_len[LO_LOWER];
  return (size_t) n > len && strncmp(real, f->dir[LO_LOWER], len) == 0 && real[len] == '/';
}

// For a successful OPEN reply of a lower file at least passthrough_min bytes long: the backing
// id to answer with (>= 0), or -1 (answer as libfuse does). Lower files never change and are
// opened only for reading, so every open of one qualifies alike.
static int32_t lo_passthrough_id(lo_chan *c, int devfd, uint64_t fh) {
  lo_fast *f = lo_chan_fast(c);
  if (!c->passthrough || f == NULL || f->passthrough_min < 0) return -1;
  if ((lo_current.open_flags & O_ACCMODE) != O_RDONLY) return -1;
  int fd = LO_FH_FD(fh);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || !lo_fd_is_lower(f, fh, &st)) return -1;
  if (st.st_size < f->passthrough_min) return -1;
  lo_backing *b = lo_backing_get(c, devfd, fd, &st);
  if (b == NULL) return -1;
  if (b->id < 0) return -1;
  lo_count(f, LO_C_PASSTHROUGH);
  return b->id;
}

// ---- receiving and sending -------------------------------------------------------------------

static int lo_chan_receive(struct fuse_chan **chp, char *buf, size_t size) {
  struct fuse_chan *ch = *chp;
  struct fuse_session *se = fuse_chan_session(ch);
  lo_chan *c = (lo_chan *) fuse_chan_data(ch);
  for (;;) {
    ssize_t n = read(fuse_chan_fd(ch), buf, size);
    int err = errno;
    if (fuse_session_exited(se)) return 0;
    if (n < 0) {
      if (err == ENOENT) continue; // the request was interrupted before we read it
      if (err == ENODEV) {         // unmounted
        fuse_session_exit(se);
        return 0;
      }
      if (err != EINTR && err != EAGAIN) perror("fuse: reading device");
      return -err;
    }
    if ((size_t) n < sizeof(lo_in_header)) {
      fprintf(stderr, "short read on fuse device\n");
      return -EIO;
    }
    const lo_in_header *in = (const lo_in_header *) buf;
    const char *arg = buf + sizeof(lo_in_header);
    size_t arg_len = (size_t) n - sizeof(lo_in_header);
    lo_current.unique = in->unique;
    lo_current.nodeid = in->nodeid;
    lo_current.opcode = in->opcode;
    lo_current.open_flags = 0;
    if (in->opcode == LO_FUSE_OPEN && arg_len >= sizeof(lo_open_in)) {
      lo_current.open_flags = ((const lo_open_in *) arg)->flags;
    } else if (in->opcode == LO_FUSE_RELEASE && arg_len >= sizeof(lo_release_in)) {
      // Before libfuse closes the descriptor (and another open may get its number).
      lo_backing_put(c, fuse_chan_fd(ch), LO_FH_FD(((const lo_release_in *) arg)->fh));
    } else if (in->opcode == LO_FUSE_INIT && arg_len >= sizeof(lo_init_in)) {
      const lo_init_in *init = (const lo_init_in *) arg;
      c->kernel_passthrough = (init->flags & LO_FUSE_INIT_EXT) && (init->flags2 & LO_FUSE_PASSTHROUGH2);
    }
    return (int) n;
  }
}

static int lo_reply_to(const struct iovec iov[], size_t count, uint32_t opcode, size_t arg_len) {
  if (count != 2 || iov[0].iov_len != sizeof(lo_out_header) || iov[1].iov_len != arg_len) return 0;
  const lo_out_header *out = (const lo_out_header *) iov[0].iov_base;
  return out->error == 0 && out->unique == lo_current.unique && lo_current.opcode == opcode;
}

static int lo_chan_send(struct fuse_chan *ch, const struct iovec iov[], size_t count) {
  if (iov == NULL) return 0;
  lo_chan *c = (lo_chan *) fuse_chan_data(ch);
  int devfd = fuse_chan_fd(ch);
  struct iovec patched[2];
  lo_out_header header;
  lo_open_out open_out;
  lo_init_out init_out;
  int passthrough_fd = -1;

  if (lo_reply_to(iov, count, LO_FUSE_OPENDIR, sizeof(lo_open_out)) && lo_current.nodeid != LO_FUSE_ROOT_ID) {
    lo_fast *f = lo_chan_fast(c);
    if (f != NULL && __atomic_load_n(&f->enabled, __ATOMIC_ACQUIRE)) {
      memcpy(&open_out, iov[1].iov_base, sizeof(open_out));
      lo_count(f, LO_C_CACHED_LISTING);
      open_out.open_flags |= lo_listing_flags(f, lo_current.nodeid);
      patched[0] = iov[0];
      patched[1] = (struct iovec) { &open_out, sizeof(open_out) };
      iov = patched;
    }
  } else if (lo_reply_to(iov, count, LO_FUSE_OPEN, sizeof(lo_open_out))) {
    memcpy(&open_out, iov[1].iov_base, sizeof(open_out));
    int32_t id = lo_passthrough_id(c, devfd, open_out.fh);
    if (id >= 0) {
      // The kernel reads the backing file itself, which has its own page cache.
      open_out.open_flags = (open_out.open_flags & ~LO_FOPEN_KEEP_CACHE) | LO_FOPEN_PASSTHROUGH;
      open_out.backing_id = id;
      passthrough_fd = LO_FH_FD(open_out.fh);
      patched[0] = iov[0];
      patched[1] = (struct iovec) { &open_out, sizeof(open_out) };
      iov = patched;
    } else if (c->passthrough) {
      // A refused backing file still counted an open (page cache mode for the file).
      int fd = LO_FH_FD(open_out.fh);
      pthread_mutex_lock(&c->lock);
      int held = fd >= 0 && (size_t) fd < c->by_fd_len && c->by_fd[fd] != NULL;
      pthread_mutex_unlock(&c->lock);
      if (held) passthrough_fd = fd;
    }
  } else if (lo_reply_to(iov, count, LO_FUSE_INIT, LO_INIT_OUT_LIBFUSE)) {
    lo_fast *f = lo_chan_fast(c);
    if (c->kernel_passthrough && f != NULL && f->passthrough_min >= 0) {
      // Ask for passthrough (7.40) in an otherwise unchanged 7.19 reply: the kernel reads the
      // extended fields whatever the minor version (fs/fuse/inode.c process_init_reply).
      memset(&init_out, 0, sizeof(init_out));
      memcpy(&init_out, iov[1].iov_base, LO_INIT_OUT_LIBFUSE);
      init_out.flags |= LO_FUSE_INIT_EXT;
      init_out.flags2 |= LO_FUSE_PASSTHROUGH2;
      init_out.max_stack_depth = 1; // backing files on a stacked fs (overlayfs) are refused
      memcpy(&header, iov[0].iov_base, sizeof(header));
      header.len = (uint32_t) (sizeof(header) + sizeof(init_out));
      patched[0] = (struct iovec) { &header, sizeof(header) };
      patched[1] = (struct iovec) { &init_out, sizeof(init_out) };
      iov = patched;
      c->passthrough = 1;
    }
  }

  if (writev(devfd, iov, (int) count) < 0) {
    int err = errno;
    // The kernel never got this open (interrupted), and libfuse releases the handle itself.
    if (passthrough_fd >= 0) lo_backing_put(c, devfd, passthrough_fd);
    // ENOENT: the request was interrupted meanwhile, and the kernel no longer wants the reply.
    if (!fuse_session_exited(fuse_chan_session(ch)) && err != ENOENT) perror("fuse: writing device");
    return -err;
  }
  return 0;
}

static void lo_chan_destroy(struct fuse_chan *ch) {
  // The descriptor belongs to libfuse's kernel channel, which fuse_unmount closes. lo_chan
  // stays: the process ends with the mount.
  (void) ch;
}

static struct fuse_chan_ops lo_chan_ops = {
  .receive = lo_chan_receive,
  .send = lo_chan_send,
  .destroy = lo_chan_destroy,
};

// The channel the session serves: ours over the kernel channel's descriptor, or the kernel
// channel itself if ours cannot be made.
static struct fuse_chan *lo_channel(struct fuse_chan *kernel, fuse_thread_t *ft) {
  lo_chan *c = calloc(1, sizeof(lo_chan));
  if (c == NULL || pthread_mutex_init(&c->lock, NULL) != 0) return kernel;
  c->ft = ft;
  struct fuse_chan *ch = fuse_chan_new(&lo_chan_ops, fuse_chan_fd(kernel), fuse_chan_bufsize(kernel), c);
  return ch != NULL ? ch : kernel;
}

// ---- the JS side's API (src/fuse/fast-path.ts) ---------------------------------------------

static lo_fast *lo_of(napi_env env, napi_value thread) {
  fuse_thread_t *ft;
  size_t len;
  if (napi_get_buffer_info(env, thread, (void **) &ft, &len) != napi_ok || len < sizeof(fuse_thread_t)) return NULL;
  return ft->fast;
}

// fuse_native_fast_config(thread, upperDir, lowerDir, upperDev, lowerDev, passthroughMin):
// creates the fast path, disabled and empty; lower files of at least passthroughMin bytes are
// opened with FUSE passthrough if the kernel has it (-1: never). Idempotent per mount. Call it
// before the kernel's INIT is answered (the JS init handler) for passthrough to be asked for.
NAPI_METHOD(fuse_native_fast_config) {
  NAPI_ARGV(6)
  fuse_thread_t *ft;
  size_t ft_len;
  NAPI_STATUS_THROWS(napi_get_buffer_info(env, argv[0], (void **) &ft, &ft_len));
  if (ft_len < sizeof(fuse_thread_t)) {
    napi_throw_error(env, "EINVAL", "fast path: not a mount's thread buffer");
    return NULL;
  }
  NAPI_ARGV_UTF8(upper, PATH_MAX, 1)
  NAPI_ARGV_UTF8(lower, PATH_MAX, 2)
  double devs[2];
  NAPI_STATUS_THROWS(napi_get_value_double(env, argv[3], &devs[0]));
  NAPI_STATUS_THROWS(napi_get_value_double(env, argv[4], &devs[1]));
  double passthrough_min;
  NAPI_STATUS_THROWS(napi_get_value_double(env, argv[5], &passthrough_min));
  if (ft->fast != NULL) return NULL;

  lo_fast *f = calloc(1, sizeof(lo_fast));
  if (f == NULL || pthread_rwlock_init(&f->lock, NULL) != 0 || pthread_mutex_init(&f->listings_lock, NULL) != 0) {
    napi_throw_error(env, "ENOMEM", "fast path: out of memory");
    return NULL;
  }
  f->passthrough_min = passthrough_min < 0 ? -1 : (int64_t) passthrough_min;
  f->nbuckets = 1024;
  f->buckets = calloc(f->nbuckets, sizeof(lo_entry *));
  if (f->buckets == NULL) {
    napi_throw_error(env, "ENOMEM", "fast path: out of memory");
    return NULL;
  }
  const char *dirs[2] = { upper, lower };
  for (int i = 0; i < 2; i++) {
    strncpy(f->dir[i], dirs[i], PATH_MAX - 1);
    f->dir_len[i] = strlen(f->dir[i]);
    f->dev[i] = (dev_t) devs[i];
  }
  __atomic_store_n(&ft->fast, f, __ATOMIC_RELEASE);
  return NULL;
}

// fuse_native_fast_set(thread, name, kind): kind 0 upper object, 1 lower object, 2 whiteout,
// -1 forget the name.
NAPI_METHOD(fuse_native_fast_set) {
  NAPI_ARGV(3)
  lo_fast *f = lo_of(env, argv[0]);
  if (f == NULL) return NULL;
  char name[LO_NAME_MAX * 4 + 1];
  size_t len;
  NAPI_STATUS_THROWS(napi_get_value_string_utf8(env, argv[1], name, sizeof(name), &len));
  NAPI_ARGV_INT32(kind, 2)
  if (len == 0 || len > LO_NAME_MAX) return NULL; // never in the table; lo_resolve passes such names
  lo_put(f, name, len, kind); // out of memory switches the fast path off (lo_fast.failed)
  return NULL;
}

// fuse_native_fast_reset(thread): forgets every name (the JS side pushes its index again).
NAPI_METHOD(fuse_native_fast_reset) {
  NAPI_ARGV(1)
  lo_fast *f = lo_of(env, argv[0]);
  if (f == NULL) return NULL;
  pthread_rwlock_wrlock(&f->lock);
  lo_clear_locked(f, 0);
  pthread_rwlock_unlock(&f->lock);
  // An object's layer may have changed beside the mount: every kept listing is listed again.
  pthread_mutex_lock(&f->listings_lock);
  f->epoch++;
  pthread_mutex_unlock(&f->listings_lock);
  return NULL;
}

// fuse_native_fast_enable(thread, on)
NAPI_METHOD(fuse_native_fast_enable) {
  NAPI_ARGV(2)
  lo_fast *f = lo_of(env, argv[0]);
  if (f == NULL) return NULL;
  bool on;
  NAPI_STATUS_THROWS(napi_get_value_bool(env, argv[1], &on));
  __atomic_store_n(&f->enabled, on && !__atomic_load_n(&f->failed, __ATOMIC_ACQUIRE) ? 1 : 0, __ATOMIC_RELEASE);
  return NULL;
}

// fuse_native_fast_counters(thread): [counter..., entries, enabled] as numbers, or null.
NAPI_METHOD(fuse_native_fast_counters) {
  NAPI_ARGV(1)
  lo_fast *f = lo_of(env, argv[0]);
  napi_value out;
  if (f == NULL) {
    napi_get_null(env, &out);
    return out;
  }
  napi_create_array_with_length(env, LO_C_COUNT + 2, &out);
  for (int i = 0; i < LO_C_COUNT; i++) {
    napi_value v;
    napi_create_double(env, (double) __atomic_load_n(&f->counters[i], __ATOMIC_RELAXED), &v);
    napi_set_element(env, out, i, v);
  }
  pthread_rwlock_rdlock(&f->lock);
  double entries = (double) f->count;
  pthread_rwlock_unlock(&f->lock);
  napi_value v;
  napi_create_double(env, entries, &v);
  napi_set_element(env, out, LO_C_COUNT, v);
  napi_create_double(env, (double) __atomic_load_n(&f->enabled, __ATOMIC_ACQUIRE), &v);
  napi_set_element(env, out, LO_C_COUNT + 1, v);
  return out;
}

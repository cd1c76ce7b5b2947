/*
 * wsdisk.h - the per-sandbox disk quota: each workspace directory is a file system of its own,
 * an ext4 image file of sandbox_disk_mib (sparse) loop-mounted on the directory, so that the
 * sandbox's writes past that size fail with ENOSPC inside and never reach the host's disk.
 *
 * Layout: the image of the workspace <dir> is the file <dir>.disk next to it (root only, mode
 * 0600; never inside a sandbox). A workspace is "a disk" when <dir> is a mount point and
 * <dir>.disk exists. Mount points cannot be renamed: wsdisk_move() moves the mount (MS_MOVE)
 * and renames the image with it; wsdisk_remove() unmounts and deletes it.
 *
 * Only session workspaces (<data_dir>/workspaces/<session id>) outlive the server: the others
 * (warm pool, image builds, fills in progress) are removed when it starts and stops. The
 * session workspaces stay mounted when the server stops or dies and are adopted as they are at
 * the next start (same device: the snapshot stat caches, which record it, stay valid); after a
 * reboot they are mounted again at start, before anything reads them.
 *
 * Threads: every function is thread safe; calls on the same directory must be serialized by
 * the caller (the workspace layer owns each directory at one place at a time).
 */
#ifndef SESSIOND_WSDISK_H
#define SESSIOND_WSDISK_H

#include <stddef.h>
#include <stdint.h>

struct wsdisk;

struct wsdisk_config {
    const char *data_dir; /* required; the workspaces are under it */
    int64_t mib;          /* size of each workspace's file system; 0 = no new disks */
};

/** Probe whether disks can be made here (root, /dev/loop-control, mkfs.ext4, one test mount),
 * then adopt the disks left under data_dir: session workspaces are mounted (checked with
 * e2fsck -p first if they were not unmounted cleanly), every other one is removed. One log line
 * says whether the quota is enforced and, if not, why. Fails only on allocation; *out:
 * wsdisk_close.
 */
int wsdisk_open(const struct wsdisk_config *cfg, struct wsdisk **out);
/** Remove every disk but the session workspaces' (which stay mounted for the next start), free.
 * NULL is a no-op. */
void wsdisk_close(struct wsdisk *d);

/** 1 if new workspaces get a disk of their own (quota on and possible here). */
int wsdisk_enforced(const struct wsdisk *d);
/** The size of a workspace's disk in MiB (the configured value, also when not enforced). */
int64_t wsdisk_mib(const struct wsdisk *d);
/** Why the quota is not enforced ("" when it is, or when it is off). */
const char *wsdisk_reason(const struct wsdisk *d);

/** Make the workspace directory dir: with the quota, a new disk mounted on it (its root owned by
 * root, mode 0755, empty: no lost+found); else a plain directory. An existing disk, or an
 * existing non-empty plain directory (a workspace made before the quota was on), is left as it
 * is. d may be NULL (a plain directory). 0 or ERR_IO. */
int wsdisk_make(struct wsdisk *d, const char *dir);
/** Rename the workspace from to the path to (which must not exist, or be an empty directory):
 * a disk is moved (its mount and its image), a plain directory renamed. 0 or ERR_IO. */
int wsdisk_move(struct wsdisk *d, const char *from, const char *to);
/** If dir is a disk: unmount it (lazily: a sandbox that still runs on it keeps it until it ends;
 * the copies other sandboxes' mount namespaces hold go at once, with the mount point), delete
 * its image and the empty mount point, and return 0. ERR_NOT_FOUND if dir is not a disk
 * (the caller deletes the tree as before). d may be NULL (ERR_NOT_FOUND). */
int wsdisk_remove(struct wsdisk *d, const char *dir);
/** 1 if dir is a disk (a mount point with its image next to it). */
int wsdisk_is_disk(const char *dir);

#endif

/* C glue the Swift core needs: the public header's types, checksums and the
 * few libc facilities Swift cannot reach directly (variadics, thread-locals). */
#ifndef CSHIM_H
#define CSHIM_H

#include "migrationkit.h"
#include "cshim_crc.h"
#include "cshim_hash.h"
#include "cshim_sha256.h"
#include "cshim_sys.h"

#endif

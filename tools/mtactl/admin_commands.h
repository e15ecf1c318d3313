// mtactl's admin API commands (queue, messages, show, suspend, resume, suspended, retry,
// bounce, reload).
#ifndef TOOLS_MTACTL_ADMIN_COMMANDS_H_
#define TOOLS_MTACTL_ADMIN_COMMANDS_H_

#include <string>
#include <vector>

namespace mta::tools {

/** Usage text of the admin commands. */
extern const char kAdminUsage[];

/** True if `command` is one of the admin commands. */
bool IsAdminCommand(const std::string& command);

/**
 * Runs an admin command; `args` starts with the command. Options anywhere: --url URL
 * (default $MTACTL_URL or http://127.0.0.1:8025), --token-file FILE (default
 * $MTACTL_TOKEN_FILE). Returns the exit code: 0 done, 1 refused or failed, 2 usage.
 */
int RunAdminCommand(std::vector<std::string> args);

}  // namespace mta::tools

#endif  // TOOLS_MTACTL_ADMIN_COMMANDS_H_

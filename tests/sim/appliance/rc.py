"""LunaSH return codes, as `Error:  '<cmd>' failed. (<HEX> : <NAME>)` prints them.

[V] seen in public transcripts (luna.md); [K] the simulator's own guess, chosen in the
same families (A0xxxx PIN errors, 30xxxx login thresholds, C0000xxx shell RC_ codes).
"""

PIN_INCORRECT = ("A00000", "LUNA_RET_UM_PIN_INCORRECT")                          # [V]
SO_LOGIN_THRESHOLD = ("30000F", "LUNA_RET_SO_LOGIN_FAILURE_THRESHOLD")           # [V]
AUDIT_LOGIN_THRESHOLD = ("300016", "LUNA_RET_AUDIT_LOGIN_FAILURE_THRESHOLD")     # [K]
OBJECT_NOT_IN_LIST = ("C000040A", "RC_OBJECT_NOT_IN_LIST")                       # [V]
NOT_LOGGED_IN = ("300002", "LUNA_RET_USER_NOT_LOGGED_IN")                        # [K]
NOT_INITIALIZED = ("300101", "LUNA_RET_TOKEN_NOT_INITIALIZED")                   # [K]
USER_NOT_INITIALIZED = ("300103", "LUNA_RET_USER_NOT_INITIALIZED")               # [K]
ALREADY_EXISTS = ("C0000409", "RC_OBJECT_ALREADY_EXISTS")                        # [K]
FILE_NOT_FOUND = ("C0000403", "RC_FILE_NOT_FOUND")                               # [K]
BAD_PARAMETER = ("C0000002", "RC_BAD_PARAMETER")                                 # [K]
OPERATION_NOT_ALLOWED = ("C0000007", "RC_OPERATION_NOT_ALLOWED")                 # [K]
TOO_MANY_PARTITIONS = ("300120", "LUNA_RET_PARTITION_LIMIT_REACHED")             # [K]
CANCELLED = ("C0000001", "RC_OPERATION_CANCELLED")                               # [K]
GENERAL_ERROR = ("C0000000", "RC_GENERAL_ERROR")                                 # [K]

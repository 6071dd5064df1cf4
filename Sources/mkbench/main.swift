print("mkbench: not yet")

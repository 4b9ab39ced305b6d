#!/usr/bin/env bash
echo "MinkowskiEngine install: see issue 4 (not yet written)"

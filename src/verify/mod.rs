//! Checks from local files to the XDS stream; each explains its failure.

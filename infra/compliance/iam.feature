Feature: IAM is least privilege
  In order that a leaked service account key cannot take over the project
  As the owner of the histoscreen project
  I want no primitive roles and no authoritative project IAM from this module

  Scenario: No primitive roles (owner, editor, viewer)
    Given I have resource that supports role defined
    When it has role
    Then its value must not match the "^roles/(owner|editor|viewer)$" regex

  Scenario Outline: Project IAM is only ever added to, never replaced
    Given I have <authoritative_iam> defined
    Then it must fail

    Examples:
      | authoritative_iam          |
      | google_project_iam_policy  |
      | google_project_iam_binding |
